"""A control plane that cannot start says why, and leaves nothing behind."""

from __future__ import annotations

import pytest

from tests.cluster.binaries import Binaries
from tests.cluster.controlplane import ControlPlane, ControlPlaneError, ControlPlaneSettings


def test_failed_start_shows_the_log_tail_and_cleans_up(cluster_binaries: Binaries) -> None:
    settings = ControlPlaneSettings(start_timeout=30, extra_apiserver_args=("--no-such-flag",))
    cp = ControlPlane(cluster_binaries, settings)
    with pytest.raises(ControlPlaneError) as err:
        cp.start()
    message = str(err.value)
    assert "kube-apiserver exited with code" in message
    assert "unknown flag: --no-such-flag" in message
    assert not cp.dir.exists()
    assert all(not p.running() for p in cp._alive_required())
