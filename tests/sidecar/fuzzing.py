"""Hypothesis profiles for the fuzz tests: a few seconds in ``make test``, longer in ``make fuzz``.

``SHARDMESH_FUZZ=1`` selects the long profile; ``FUZZ_EXAMPLES`` sets its
budget (examples per test, default 2000). Every fuzz test takes ``FUZZ`` as
its settings, so the other property tests keep Hypothesis' defaults.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large,
           HealthCheck.function_scoped_fixture]
settings.register_profile("fuzz-quick", max_examples=40, deadline=None,
                          suppress_health_check=_CHECKS)
settings.register_profile("fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "2000")),
                          deadline=None, suppress_health_check=_CHECKS)

FUZZ = settings.get_profile("fuzz" if os.environ.get("SHARDMESH_FUZZ") == "1" else "fuzz-quick")
