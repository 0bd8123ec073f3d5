"""Where the control-plane binaries live, and how they get there.

Rule: the version comes from ``tests/cluster/go.mod`` (the ``k8s.io/kubernetes``
requirement) and nowhere else, so bumping it there rebuilds into a new cache
folder. The cache sits outside the work tree so that a fresh clone reuses it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
GO_MOD = HERE / "go.mod"
BUILD_SCRIPT = HERE / "build.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
STAMP = ".complete"  # build.sh writes it last: without it a build was cut short
INSTALL_HINT = (
    "cluster tests need Go >= 1.26 to build the control plane: "
    "install golang and run 'make cluster-bins'"
)


class MissingBinaries(RuntimeError):
    """The binaries are absent and cannot be built here (no Go, or the build failed)."""


@dataclass(frozen=True)
class Binaries:
    """Paths of the four control-plane executables of one version."""

    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name


def kubernetes_version(go_mod: Path = GO_MOD) -> str:
    """The ``k8s.io/kubernetes`` version pinned in go.mod, e.g. ``v1.37.2``."""
    match = re.search(r"^\s*k8s\.io/kubernetes\s+(v\S+)", go_mod.read_text(), re.MULTILINE)
    if match is None:
        raise MissingBinaries(f"no 'k8s.io/kubernetes vX.Y.Z' requirement in {go_mod}")
    return match.group(1)


def cache_root() -> Path:
    """``$SHARDMESH_CACHE`` or ``~/.cache/shardmesh`` (the same rule as build.sh)."""
    configured = os.environ.get("SHARDMESH_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "shardmesh"


def binaries_dir() -> Path:
    return cache_root() / f"bin-{kubernetes_version()}"


def missing(directory: Path) -> list[str]:
    """Names of the executables (or the build stamp) not (yet) in ``directory``."""
    absent = [name for name in BINARIES if not os.access(directory / name, os.X_OK)]
    return absent if (directory / STAMP).is_file() else [*absent, STAMP]


def have_go() -> bool:
    return shutil.which("go") is not None


def build() -> None:
    """Run build.sh (several minutes the first time), streaming its output."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], check=False)
    if result.returncode != 0:
        raise MissingBinaries(f"{BUILD_SCRIPT} failed with exit code {result.returncode}")


def locate(build_if_missing: bool = False) -> Binaries:
    """The cached binaries; builds them first if asked and Go is there.

    Raises MissingBinaries with the one-line install hint when they cannot be had.
    """
    directory = binaries_dir()
    if not missing(directory):
        return Binaries(directory)
    if not have_go():
        raise MissingBinaries(INSTALL_HINT)
    if not build_if_missing:
        raise MissingBinaries(
            f"control-plane binaries missing in {directory}: {', '.join(missing(directory))}; "
            "run 'make cluster-bins'"
        )
    build()
    if missing(directory):
        raise MissingBinaries(
            f"build finished but {directory} lacks {', '.join(missing(directory))}"
        )
    return Binaries(directory)
