"""Bounded waiting for tests: every wait names what it waited for and what it last saw."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(probe: Callable[[], T], what: str, timeout: float = 30.0,
             interval: float = 0.1) -> T:
    """Call ``probe`` until it returns something truthy, and return that.

    Fails with an AssertionError naming ``what`` and the last value (or
    exception) seen once ``timeout`` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
        except Exception as exc:  # reported if the wait times out
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; "
                                 f"last seen: {last!r}")
        time.sleep(interval)
