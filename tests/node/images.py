"""The images the node tier runs, imported into the node's containerd (no registry).

- pause: the static ``pause`` program of build-node.sh, as a one-layer image.
- the product image, built from the Dockerfile by ``tests/image/build.sh`` on
  the local Debian base, under a tag of its own (other work trees build the
  manifests' tag too), then tagged in containerd as the manifests name it
  (``ghcr.io/shardmesh/shardmesh:<version>``). It also plays the backend
  (``shardmesh accounts-backend``) and the client app (its python).

An image is imported once per docker image ID (``shardmesh.local/cache:<id>``
in containerd, whose root is kept across runs), so a warm run imports nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

from tests.cluster.node import SANDBOX_IMAGE, Node, node_dir

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "tests" / "image" / "build.sh"
#: One tag per work tree: others build into the same dockerd at the same time.
LOCAL_TAG = f"shardmesh.local/shardmesh-node:{hashlib.sha256(str(REPO).encode()).hexdigest()[:12]}"


def product_version() -> str:
    match = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert match, "no version in pyproject.toml"
    return match.group(1)


def product_image() -> str:
    """The image name the manifests (and the webhook's SHARDMESH_SIDECAR_IMAGE) use."""
    return f"ghcr.io/shardmesh/shardmesh:{product_version()}"


def pause_tar(directory: Path) -> Path:
    """A docker-save archive of one layer holding /pause (static), its entrypoint."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tar.gettarinfo(str(node_dir() / "pause"), arcname="pause")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode = 0o755
        with (node_dir() / "pause").open("rb") as f:
            tar.addfile(info, f)
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [SANDBOX_IMAGE],
                            "Layers": ["layer.tar"]}]).encode()
    out = directory / "pause.tar"
    with tarfile.open(out, mode="w") as tar:
        for name, data in (("layer.tar", layer_bytes), (config_name, config),
                           ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


class NoDocker(RuntimeError):
    """No Docker engine to build the image with (build.sh's one-line reason)."""


def build_product_image(log: Path) -> str:
    """tests/image/build.sh under LOCAL_TAG; returns the docker image ID."""
    env = {**os.environ, "IMAGE": LOCAL_TAG, "BUILD_LOG": str(log)}
    result = subprocess.run(["bash", str(BUILD)], env=env, capture_output=True, text=True,
                            check=False, timeout=1200)
    if result.returncode == 3:  # build.sh: no engine that runs, and why
        raise NoDocker(result.stderr.strip().splitlines()[-1])
    if result.returncode != 0:
        raise RuntimeError(f"{BUILD} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    docker = os.environ.get("DOCKER", "docker")
    return subprocess.run([docker, "image", "inspect", "-f", "{{.Id}}", LOCAL_TAG],
                          capture_output=True, text=True, check=True).stdout.strip()


def load_images(node: Node, image_id: str) -> dict[str, str]:
    """Pause and the product image into containerd; returns what was done, by image."""
    done: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="shardmesh-images-") as tmp:
        node.import_image(pause_tar(Path(tmp)))
        done[SANDBOX_IMAGE] = "imported"
        cached = f"shardmesh.local/cache:{image_id.removeprefix('sha256:')[:16]}"
        if node.has_image(cached):
            done[product_image()] = f"cached ({cached})"
        else:
            tar = Path(tmp) / "product.tar"
            docker = os.environ.get("DOCKER", "docker")
            subprocess.run([docker, "save", "-o", str(tar), LOCAL_TAG], check=True,
                           capture_output=True, timeout=300)
            node.import_image(tar)
            node.tag_image(LOCAL_TAG, cached)
            done[product_image()] = "imported"
        node.tag_image(cached, product_image())
    return done
