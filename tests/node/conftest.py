"""The node tier's fixture: a control plane, a real node (tests/cluster/node.py), the images.

It skips with one line naming what the host lacks (root, cgroups, containerd,
runc, iptables, the node binaries, a Docker engine to build the image); under
CI=true it fails instead, as the control plane's fixture does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

from tests.cluster import binaries
from tests.cluster.controlplane import ControlPlane, ControlPlaneSettings
from tests.cluster.node import EXTRA_CONTROLLERS, Node, missing_prerequisites
from tests.cluster.node import build as build_node
from tests.node import images


@dataclass
class NodeCluster:
    cp: ControlPlane
    node: Node
    timings: dict[str, float] = field(default_factory=dict)
    loaded: dict[str, str] = field(default_factory=dict)


def _skip_or_fail(why: str) -> NoReturn:
    line = f"node tier: {why}"
    if os.environ.get("CI") == "true":
        pytest.fail(line, pytrace=False)
    pytest.skip(line)


@pytest.fixture(scope="session")
def node_cluster(cluster_binaries: binaries.Binaries) -> Iterator[NodeCluster]:
    """A control plane with a registered, Ready node ``smnode`` and the product image on it."""
    if missing_prerequisites() and binaries.have_go():
        build_node()
    missing = missing_prerequisites()
    if shutil.which(os.environ.get("DOCKER", "docker")) is None:
        missing.append("docker (to build the product image: make image)")
    if missing:
        _skip_or_fail("needs " + "; ".join(missing))
    began = time.monotonic()
    timings: dict[str, float] = {}
    log = Path(tempfile.gettempdir()) / "shardmesh-node-image-build.log"
    try:
        image_id = images.build_product_image(log)
    except images.NoDocker as exc:
        _skip_or_fail(f"needs a Docker engine to build the image: {exc}")
    timings["image build"] = time.monotonic() - began
    settings = ControlPlaneSettings.from_env()
    settings = ControlPlaneSettings(
        keep_dir=settings.keep_dir,
        extra_apiserver_args=("--kubelet-preferred-address-types=InternalIP",),
        extra_controllers=EXTRA_CONTROLLERS)
    cp = ControlPlane(cluster_binaries, settings)
    node = Node(cp)
    try:
        mark = time.monotonic()
        node.start_runtime()
        loaded = images.load_images(node, image_id)
        timings["containerd + images"] = time.monotonic() - mark
        mark = time.monotonic()
        cp.start()
        timings["control plane"] = time.monotonic() - mark
        mark = time.monotonic()
        node.start_kubelet()
        timings["kubelet to node Ready"] = time.monotonic() - mark
        yield NodeCluster(cp, node, timings, loaded)
    finally:
        node.stop()
        cp.stop()
