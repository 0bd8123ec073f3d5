"""The installed product under test: a ``shardmesh`` executable or an image.

The smoke suite (tests/smoke) runs against what users install, never the source
tree: ``--shardmesh PATH`` is the console script of a venv holding the wheel and
the pinned runtime dependencies (make smoke-wheel); ``--image NAME`` runs each
command in the image with the manifests' securityContext (make smoke-image).
Every command runs from a directory outside the source tree, with no
PYTHONPATH, so nothing can come from the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: The environment variables a product process gets: none of the test venv's.
_KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")


@dataclass
class Product:
    #: The venv's ``shardmesh`` console script, or None for an image.
    executable: Path | None = None
    #: The image to run each command in, or None for an executable.
    image: str | None = None
    #: A directory outside the source tree, readable by the image's user: the
    #: commands' working directory and where tests put files for them.
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="shardmesh-smoke-")))

    def __post_init__(self) -> None:
        assert (self.executable is None) != (self.image is None)
        assert REPO not in self.workdir.resolve().parents
        self.workdir.chmod(0o755)  # the image's user (65532) reads what tests put here

    @property
    def kind(self) -> str:
        return f"image {self.image}" if self.image else f"venv {self.executable}"

    def env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k in _KEPT}

    def docker(self, *, entrypoint: str | None = None, stdin: bool = False,
               writable_tmp: bool = False, name: str | None = None) -> list[str]:
        """``docker run`` as the manifests run the image: non-root 65532, read-only root
        filesystem, no capabilities, no privilege escalation; host network, loopback only."""
        assert self.image is not None
        argv = [os.environ.get("SHARDMESH_DOCKER", "docker"), "run", "--rm",
                "--network", "host", "--read-only", "--user", "65532:65532", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges",
                "-v", f"{self.workdir}:{self.workdir}:ro", "--workdir", "/"]
        if stdin:
            argv.append("-i")
        if writable_tmp:  # the webhook Deployment's emptyDir at /tmp
            argv += ["--tmpfs", "/tmp:mode=1777"]
        if name:
            argv += ["--name", name]
        if entrypoint:
            argv += ["--entrypoint", entrypoint]
        return [*argv, self.image]

    def command(self, *, stdin: bool = False, writable_tmp: bool = False,
                name: str | None = None) -> list[str]:
        """The argv prefix that runs ``shardmesh``."""
        if self.image:
            return self.docker(stdin=stdin, writable_tmp=writable_tmp, name=name)
        assert self.executable is not None
        return [str(self.executable)]

    def python(self) -> list[str]:
        """The argv prefix that runs the product's own Python interpreter."""
        if self.image:
            return self.docker(entrypoint="python")
        assert self.executable is not None
        return [str(self.executable.parent / "python")]

    def run(self, args: Sequence[str], input: str | None = None, timeout: float = 60,
            python: bool = False) -> subprocess.CompletedProcess[str]:
        prefix = self.python() if python else self.command(stdin=input is not None)
        return subprocess.run([*prefix, *args], input=input, capture_output=True, text=True,
                              cwd=self.workdir, env=self.env(), timeout=timeout)

    def put(self, name: str, data: bytes, mode: int = 0o644) -> Path:
        path = self.workdir / name
        path.write_bytes(data)
        path.chmod(mode)
        return path

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def from_options(executable: str | None, image: str | None) -> Product | None:
    if image:
        return Product(image=image)
    if executable:
        path = Path(executable).absolute()
        assert path.exists(), f"--shardmesh {executable}: no such file"
        return Product(executable=path)
    return None
