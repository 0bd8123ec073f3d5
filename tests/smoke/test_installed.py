"""What a user gets from ``pip install`` or the image, run as they run it.

Each test runs the installed ``shardmesh`` (tests/smoke/product.py), never the
source tree. These are the failures a development venv hides: a module the
product imports that no declared dependency brings (gunicorn's gevent worker
needs ``packaging``), a data plane that silently was not compiled, a file the
wheel or the image leaves out.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from sidecar.shardfn import ordinal_for
from tests.cluster.processes import free_port
from tests.sidecar.backends import start_backends
from tests.sidecar.harness import get_json, request
from tests.smoke.product import REPO, Product
from tests.webhook import serving
from tests.webhook.golden import TESTDATA, load_input, pod_of, review
from webhook import patch

#: Run inside the product's interpreter: imports every module of the four
#: packages and the webhook's worker classes the way gunicorn loads them.
IMPORT_ALL = r"""
import importlib, json, pkgutil, sys
from gunicorn.util import load_class
import directory, sidecar, shardmesh, webhook
from webhook.settings import WORKER_CLASSES
modules = []
for package in (shardmesh, webhook, sidecar, directory):
    modules.append(package.__name__)
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith(".__main__"):  # runs the command line when imported
            continue
        importlib.import_module(info.name)
        modules.append(info.name)
workers = {name: load_class(uri, default="gthread", section="gunicorn.workers").__name__
           for name, uri in WORKER_CLASSES.items()}
print(json.dumps({"modules": modules, "workers": workers, "compiled": sidecar.compiled(),
                  "files": [sys.modules[m].__file__ for m in ("shardmesh", "webhook", "sidecar",
                                                              "sidecar.proxy")]}))
"""


def test_every_module_and_worker_class_imports(product: Product, data_plane: str) -> None:
    result = product.run(["-c", IMPORT_ALL], python=True)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.splitlines()[-1])
    expected = {f"{d.name}.{p.stem}" for d in (REPO / "shardmesh", REPO / "webhook",
                                              REPO / "sidecar", REPO / "directory")
                for p in d.glob("*.py")
                if p.stem not in ("__init__", "__main__")}
    assert expected <= set(found["modules"]), expected - set(found["modules"])
    assert found["workers"] == {"gevent": "FairGeventWorker", "gthread": "ThreadWorker"}
    assert found["compiled"] == (data_plane == "compiled")
    for path in found["files"]:
        assert not path.startswith(str(REPO)), f"{path} comes from the source tree"
        assert "site-packages" in path, path


def test_help_and_version(product: Product, data_plane: str) -> None:
    result = product.run(["--help"])
    assert result.returncode == 0, result.stderr
    for command in ("webhook", "sidecar", "inject", "route", "check", "demo"):
        assert f"  {command} " in result.stdout
    for command in ("webhook", "sidecar", "inject", "route", "check", "directory"):
        sub = product.run([command, "--help"])
        assert sub.returncode == 0, f"{command} --help: {sub.stderr}"
        assert "usage:" in sub.stdout
    version = product.run(["--version"])
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("shardmesh 0.1.0")
    assert f"data plane: {data_plane}" in version.stdout


def test_route(product: Product) -> None:
    result = product.run(["route", "--count", "3", "7", "42", "account-7"])
    assert result.returncode == 0, result.stderr
    assert [line.split()[-1] for line in result.stdout.splitlines() if line.strip()][-3:] \
        == ["1", "0", "2"]


def test_inject_from_stdin(product: Product) -> None:
    deployment = (REPO / "examples" / "client-deployment.yaml").read_text()
    result = product.run(["inject", "-f", "-"], input=deployment)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    spec = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    names = [c["name"] for c in spec.get("initContainers", []) + spec["containers"]]
    assert "shard-router" in names


def test_webhook_default_worker_answers_a_review_over_tls(product: Product) -> None:
    bundle = serving.write_pair(product.workdir)
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (product.workdir / name).chmod(0o644)  # readable by the image's user
    log = Path(product.workdir.parent / f"{product.workdir.name}-webhook.log")
    hook = serving.start(
        ["--offline", "--cert-mode", "file", "--cert-file", str(product.workdir / "tls.crt"),
         "--key-file", str(product.workdir / "tls.key")],
        log, command=product.command(writable_tmp=True, name=f"smoke-{uuid.uuid4().hex[:8]}"),
        env=product.env(), cwd=product.workdir, wait=60)
    try:
        path = TESTDATA / "automount-false.yaml"
        pod, _, namespace = load_input(path)
        conn = hook.connection(bundle.ca_bundle)
        conn.request("POST", "/mutate", body=json.dumps(review(pod, namespace, False)).encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        conn.close()
        assert resp.status == 200
        response = answer["response"]
        assert response["allowed"] and response["auditAnnotations"]["decision"] == "injected"
        golden = path.with_name(path.name + ".injected").read_text().partition("\n")[2]
        ops = json.loads(base64.b64decode(response["patch"]))
        assert patch.apply(pod, ops) == pod_of(golden)
    finally:
        hook.stop()
    logs = hook.logs()
    assert hook.proc.returncode == 0, logs
    assert "FairGeventWorker" in logs or '"worker_class":"gevent"' in logs \
        or "gevent" in logs, logs
    assert "invalid or not found" not in logs and "Traceback" not in logs, logs


def test_sidecar_static_mode_proxies_with_the_compiled_data_plane(
        product: Product, data_plane: str) -> None:
    backends = start_backends(3)
    port, admin = free_port(), free_port()
    process = subprocess.Popen(
        [*product.command(name=f"smoke-{uuid.uuid4().hex[:8]}"), "sidecar",
         "--route", "svc=" + ",".join(b.address for b in backends), "--strategy", "jump",
         "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
         "--drain-seconds", "1"],
        cwd=product.workdir, env=product.env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(admin, "GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "sidecar not ready within 60s"
            time.sleep(0.1)
        for key in ("0", "1", "17", "user-9"):
            status, _, body = get_json(port, "/svc/x", {"X-Shard-Key": key})
            assert (status, body["ordinal"]) == (200, ordinal_for(key, "jump", 3))
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        for backend in backends:
            backend.stop()
    assert process.returncode == 0, output
    want = "compiled" if data_plane == "compiled" else "plain Python"
    assert f"data plane {want}" in output, output


@pytest.mark.parametrize("command", ["webhook", "sidecar"])
def test_bad_arguments_exit_2(product: Product, command: str) -> None:
    result = product.run([command, "--no-such-flag"])
    assert result.returncode == 2, result.stderr
