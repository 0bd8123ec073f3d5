"""Fixtures: real backends on 127.0.0.1 and a real sidecar in static mode in front of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster.controlplane import ControlPlane
from tests.cluster.kubelet import Kubelet
from tests.sidecar.backends import Backend, start_backends
from tests.sidecar.harness import SidecarThread, settings_from_args
from tests.sidecar.test_cluster import Cluster


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    started = start_backends(3)
    yield started
    for backend in started:
        backend.stop()


@pytest.fixture
def make_sidecar() -> Iterator[Callable[..., SidecarThread]]:
    running: list[SidecarThread] = []

    def make(*argv: str) -> SidecarThread:
        sidecar = SidecarThread(settings_from_args(list(argv))).start()
        running.append(sidecar)
        return sidecar

    yield make
    for sidecar in running:
        sidecar.stop()


@pytest.fixture
def sidecar(backends: list[Backend], make_sidecar: Callable[..., SidecarThread]) -> SidecarThread:
    """Route ``svc`` over the three backends, key from X-Shard-Key, modulo."""
    return make_sidecar("--route", "svc=" + ",".join(b.address for b in backends),
                        "--timeout", "2s")


@pytest.fixture
def cluster(control_plane: ControlPlane, namespace: str, kubelet: Kubelet,
            tmp_path: Path) -> Iterator[Cluster]:
    """A StatefulSet of real backends on the control plane, a direct-mode sidecar in front."""
    kubelet.watch(namespace)
    setup = Cluster(control_plane, namespace, kubelet, tmp_path)
    yield setup
    setup.stop()
