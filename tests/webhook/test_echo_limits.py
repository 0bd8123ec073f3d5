"""Limits on what a client can make the webhook write: ``clip`` for values that
messages repeat, ``logs.Throttle`` for events a client can cause by the thousand."""

from __future__ import annotations

import json
import logging

import pytest

from sidecar.annotations import AnnotationError, clip
from webhook import logs


def test_clip_keeps_short_text_and_says_how_many_bytes_it_cut() -> None:
    assert clip("x" * 200) == "x" * 200
    assert clip("x" * 201) == "x" * 200 + "...[1 more bytes]"
    assert clip("é" * 300) == "é" * 200 + "...[200 more bytes]"  # UTF-8 bytes


def test_annotation_errors_clip_the_value_and_the_pieces_they_quote() -> None:
    err = AnnotationError("shard.io/key", "header:" + "y" * 10_000, "why " + "z" * 10_000)
    assert len(str(err)) < 700
    assert err.value == "header:" + "y" * 10_000  # kept whole for the code


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    caplog.set_level(logging.INFO, logger="shardmesh.webhook")
    out: list[dict[str, object]] = []
    formatter = logs.JsonFormatter()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = formatter.format(record)
            assert "\n" not in text
            out.append(json.loads(text))

    handler = Collect()
    logs.LOGGER.addHandler(handler)
    yield out
    logs.LOGGER.removeHandler(handler)


def test_one_line_per_interval_and_key_with_the_count_left_out(
        lines: list[dict[str, object]]) -> None:
    now = [0.0]
    throttle = logs.Throttle(1.0, clock=lambda: now[0])
    for i in range(1000):  # a burst of 1,000 in half a second
        now[0] = i / 2000
        throttle.event("handshake timeout", "TLS handshake aborted", logging.WARNING,
                       reason="timeout", n=i)
    throttle.event("handshake closed", "TLS handshake aborted", logging.WARNING,
                   reason="closed")
    assert [(e["reason"], e.get("suppressed")) for e in lines] == [
        ("timeout", None), ("closed", None)]
    throttle.flush()  # not yet: the interval is not over
    assert len(lines) == 2
    now[0] = 1.0
    throttle.flush()  # the burst's last event, with the count of the others
    assert lines[-1]["n"] == 999 and lines[-1]["suppressed"] == 998
    assert sum(1 + int(str(e.get("suppressed", 0))) for e in lines) == 1001
    now[0] = 1.5
    assert not throttle.event("handshake timeout", "TLS handshake aborted", reason="timeout",
                              n=1000)
    now[0] = 2.0  # a new line, counting the one held back
    assert throttle.event("handshake timeout", "TLS handshake aborted", reason="timeout", n=1001)
    assert lines[-1]["n"] == 1001 and lines[-1]["suppressed"] == 1
    throttle.flush(5.0)
    assert lines[-1]["n"] == 1001  # nothing held back


def test_close_logs_what_is_held_back_before_its_interval_is_over(
        lines: list[dict[str, object]]) -> None:
    """A worker stopping within a second of a burst still accounts for all of it."""
    now = [0.0]
    throttle = logs.Throttle(1.0, clock=lambda: now[0])
    for i in range(100):
        now[0] = i / 1000
        throttle.event("handshake timeout", "TLS handshake aborted", reason="timeout", n=i)
    throttle.flush()  # the interval is not over: held
    assert len(lines) == 1
    throttle.close()
    assert lines[-1]["n"] == 99 and lines[-1]["suppressed"] == 98
    assert sum(1 + int(str(e.get("suppressed", 0))) for e in lines) == 100
