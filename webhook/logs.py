"""Structured logs: one JSON object per line, one line per admission decision."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

LOGGER = logging.getLogger("shardmesh.webhook")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:  # its own key: "error" is usually a field already
            entry["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("shardmesh")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # The JSON line has no caller or thread fields; not computing them saves
    # a fifth of each log call (the "Optimization" section of Python's logging
    # documentation names these switches). Process ids stay: gunicorn's own
    # log lines print %(process)d.
    logging._srcfile = None
    logging.logThreads = logging.logMultiprocessing = False


def event(msg: str, level: int = logging.INFO, exc_info: bool = False, /, **fields: Any
          ) -> None:
    """Log ``msg`` with ``fields`` as top-level keys of the JSON line (and, with
    ``exc_info`` inside an except block, the traceback under ``traceback``)."""
    LOGGER.log(level, msg, exc_info=exc_info, extra={"fields": fields})


class Throttle:
    """At most one line per ``interval`` seconds for each key. A line stands for
    itself, and ``suppressed`` says how many of its kind were left out since the
    previous one. ``flush`` (call it now and then) logs the last one left out once
    the interval is over, so that a burst's count is not lost when no event follows.

    For events a client can cause by the thousand (aborted handshakes): one line
    a second still says what happens, without the log becoming the attack.
    """

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.interval, self.clock = interval, clock
        self._last: dict[str, float] = {}
        #: key -> (the events left out, the last of them)
        self._held: dict[str, tuple[int, tuple[str, int, dict[str, Any]]]] = {}

    def event(self, key: str, msg: str, level: int = logging.WARNING, /, **fields: Any
              ) -> bool:
        """Log like ``event`` unless ``key`` was logged less than ``interval`` ago;
        True if logged."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            count = self._held[key][0] if key in self._held else 0
            self._held[key] = (count + 1, (msg, level, fields))
            return False
        left_out = self._held.pop(key, (0, None))[0]
        self._emit(key, now, msg, level, fields, left_out)
        self.flush(now)
        return True

    def flush(self, now: float | None = None) -> None:
        """Log the last event held back for each key whose interval is over."""
        now = self.clock() if now is None else now
        for key, (count, (msg, level, fields)) in list(self._held.items()):
            if now - self._last[key] >= self.interval:
                del self._held[key]
                self._emit(key, now, msg, level, fields, count - 1)

    def close(self) -> None:
        """Log every event still held back, interval or not: at a worker's exit, so a
        burst's count is not lost to a stop that comes before the next ``flush``."""
        self.flush(float("inf"))

    def _emit(self, key: str, now: float, msg: str, level: int, fields: dict[str, Any],
              left_out: int) -> None:
        self._last[key] = now
        if left_out:
            fields = {**fields, "suppressed": left_out}
        event(msg, level, **fields)
