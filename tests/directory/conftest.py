"""Fixtures the directory-mode cluster tests share (a module may define its own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.controlplane import ControlPlane
from tests.cluster.kubelet import Kubelet
from tests.directory.harness import token
from tests.directory.test_sidecar_cluster import DirectoryCluster


@pytest.fixture
def cluster(control_plane: ControlPlane, namespace: str, kubelet: Kubelet,
            tmp_path: Path) -> Iterator[DirectoryCluster]:
    kubelet.watch(namespace)
    setup = DirectoryCluster(control_plane, namespace, kubelet, tmp_path)
    yield setup
    setup.stop()


@pytest.fixture
def reader(control_plane: ControlPlane, namespace: str) -> str:
    """A token of a service account with no RBAC at all: in directory mode a sidecar
    needs none for its own namespace (SPEC §7), so no RoleBinding is made."""
    return token(control_plane.api_client(), namespace, "client")
