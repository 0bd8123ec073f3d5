"""Full-jitter backoff for the direct watches. Pure (the random source is passed in).

After an API-server restart every sidecar's watch breaks at the same instant;
with a fixed doubling they would all come back, and relist, in lockstep. Full
jitter (a uniform draw in [0, min(cap, base * 2**attempt)]) spreads them over
the whole window (AWS Architecture Blog, "Exponential Backoff And Jitter").
"""

from __future__ import annotations

import random
from collections.abc import Callable


def ceiling(attempt: int, base: float, cap: float) -> float:
    """The window of the ``attempt``-th retry (0-based): base doubled, at most cap."""
    if attempt < 0 or base <= 0 or cap < base:
        raise ValueError(f"backoff attempt={attempt} base={base} cap={cap}: "
                         "want attempt >= 0 and 0 < base <= cap")
    return min(cap, base * 2.0 ** min(attempt, 62))


def full_jitter(attempt: int, base: float, cap: float,
                rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry ``attempt``: uniform in [0, ceiling)."""
    return rand() * ceiling(attempt, base, cap)
