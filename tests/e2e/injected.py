"""Run the ``shard-router`` container of a stored pod as a local process.

Exactly the container's command, args and env are used (see ``podspec``).
What a kubelet would provide is provided the same way:
- downward API volumes: their files are written to a local directory, and the
  mount path in the arguments is mapped to it (the only rewrite);
- the service-account mount: a kubeconfig with a TokenRequest token bound to
  the pod, passed as KUBECONFIG (the sidecar's documented fallback), stands in
  for ``/var/run/secrets/kubernetes.io/serviceaccount``, so RBAC is real.
The probes are taken from the container too: readiness is awaited on the
path and port its readinessProbe names.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from sidecar.cli import build_parser
from tests.cluster.processes import free_port
from tests.e2e import podspec
from tests.e2e.credentials import write_service_account_kubeconfig

HOST = "127.0.0.1"


class SidecarFailed(RuntimeError):
    """The injected sidecar did not start, or stopped; carries its log."""


@dataclass
class InjectedSidecar:
    proc: subprocess.Popen[bytes]
    injected: list[str]
    argv: list[str]
    listen_port: int
    admin_port: int
    readiness_path: str
    log: Path

    def get_json(self, path: str, port: int | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(HOST, port or self.listen_port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw.startswith(b"{") else raw.decode()
        finally:
            conn.close()

    def routes(self) -> dict[str, Any]:
        status, body = self.get_json("/_shard/routes")
        if status != 200:
            raise SidecarFailed(f"/_shard/routes answered {status}: {body}")
        return dict(body)

    def route(self, name: str) -> dict[str, Any]:
        for route in self.routes()["routes"]:
            if route["route"] == name:
                return dict(route)
        raise SidecarFailed(f"no route {name!r} in /_shard/routes")

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _local_dir(workdir: Path, mount_path: str) -> Path:
    return workdir / "volumes" / re.sub(r"[^A-Za-z0-9]+", "_", mount_path).strip("_")


def materialise(pod: podspec.Obj, container: podspec.Obj, workdir: Path) -> dict[str, str]:
    """Write the container's downward API files; returns mount path -> local directory."""
    mounts: dict[str, str] = {}
    for item in podspec.downward_files(pod, container):
        local = _local_dir(workdir, item.mount_path)
        target = local / item.relative_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(item.content)
        mounts[item.mount_path] = str(local)
    return mounts


def executable(name: str) -> str:
    """The image's PATH lookup, with this interpreter's bin dir (the venv) first."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        raise SidecarFailed(f"command {name!r} of the injected container is not on PATH")
    return found


def probe_port(container: podspec.Obj, probe: str) -> tuple[str, int]:
    get = (container.get(probe) or {}).get("httpGet")
    if not get:
        raise SidecarFailed(f"the injected container has no {probe}.httpGet")
    return get["path"], int(get["port"])


@dataclass(frozen=True)
class Plan:
    """How the container will run here: its translated argv, env and where it answers."""

    injected: list[str]
    args: list[str]
    env: dict[str, str]
    listen_port: int
    admin_port: int
    readiness_path: str


def plan(pod: podspec.Obj, workdir: Path) -> Plan:
    """Write the container's downward API files and work out its command line.

    Raises SidecarFailed when the injected container could not work in a real pod:
    no argument names a downward API mount, or the readinessProbe is not on the
    admin port the sidecar will listen on.
    """
    container, _ = podspec.find_container(pod)
    injected = podspec.argv(container)
    env = podspec.environment(pod, container)
    mounts = materialise(pod, container, workdir)
    args, used = podspec.translate(injected, mounts)
    if not used:
        raise SidecarFailed(f"the injected command {injected} names none of the downward API "
                            f"mounts {sorted(mounts)}: the sidecar could not read the annotations")
    defaults = build_parser().parse_args(["--annotations-file", "x"])
    admin = podspec.flag_value(args, "--admin") or defaults.admin
    path, port = probe_port(container, "readinessProbe")
    if int(admin.rsplit(":", 1)[1]) != port:
        raise SidecarFailed(f"readinessProbe port {port} is not the sidecar's admin port {admin}")
    # The data port 127.0.0.1:15001 and the admin port 15020 may be taken on a shared
    # machine (other tests, a real sidecar): when the webhook leaves them at their
    # defaults, free ones are appended (argparse keeps the last value of a flag).
    listen = podspec.flag_value(args, "--listen")
    if listen is None:
        listen_port = free_port()
        args += ["--listen", f"{HOST}:{listen_port}"]
    else:
        listen_port = int(listen.rsplit(":", 1)[1])
    admin_port = port
    if podspec.flag_value(args, "--admin") is None:
        admin_port = free_port()
        args += ["--admin", f"{HOST}:{admin_port}"]
    return Plan(injected, args, env, listen_port, admin_port, path)


def launch(api: client.ApiClient, server: str, pod: podspec.Obj, workdir: Path,
           wait: float = 30.0) -> InjectedSidecar:
    """Start the pod's shard-router as a process and wait for its readinessProbe."""
    how = plan(pod, workdir)
    kubeconfig = write_service_account_kubeconfig(
        workdir / "sidecar.kubeconfig", server, api, pod["metadata"]["namespace"],
        pod["spec"].get("serviceAccountName") or "default", bound_pod=pod)
    argv = [executable(how.args[0]), *how.args[1:]]
    log = workdir / "sidecar.log"
    process_env = {"PATH": os.environ.get("PATH", ""), "KUBECONFIG": str(kubeconfig), **how.env}
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=process_env)
    sidecar = InjectedSidecar(proc, how.injected, argv, how.listen_port, how.admin_port,
                              how.readiness_path, log)
    wait_ready(sidecar, wait)
    return sidecar


def wait_ready(sidecar: InjectedSidecar, wait: float) -> None:
    deadline = time.monotonic() + wait
    last: object = None
    while time.monotonic() < deadline:
        if sidecar.proc.poll() is not None:
            raise SidecarFailed(f"the sidecar exited with {sidecar.proc.returncode}:\n"
                                f"{sidecar.logs()}")
        try:
            last = sidecar.get_json(sidecar.readiness_path, sidecar.admin_port)
            if last[0] == 200:
                return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    sidecar.stop()
    raise SidecarFailed(f"not ready on {sidecar.readiness_path} after {wait:.0f}s "
                        f"(last: {last!r}):\n{sidecar.logs()}")
