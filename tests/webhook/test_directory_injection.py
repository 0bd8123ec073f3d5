"""The webhook tells sidecars about the directory only while it knows the directory's CA."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import build_parser
from sidecar.settings import build_settings
from webhook import certs, directory
from webhook.inject import inject
from webhook.settings import Settings, load

URL = "https://shardmesh-directory.shardmesh-system.svc:443"
def real_ca(name: str = "shardmesh-directory") -> str:
    """A real CA bundle (PEM), as the directory's Secret holds."""
    now = dt.datetime.now(dt.UTC)
    bundle = certs.fresh([name], now, dt.timedelta(days=1), dt.timedelta(days=2))
    return bundle.ca_bundle.decode()

CA = real_ca()
NAMESPACE: dict[str, Any] = {"metadata": {"name": "shop", "labels": {"shard.io/inject": "true"}}}


def pod(automount: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "app:1"}]}
    if not automount:
        spec["automountServiceAccountToken"] = False
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "client", "namespace": "shop",
                         "annotations": {"shard.io/backend": "ledger"}},
            "spec": spec}


def sidecar_env(settings: Settings, automount: bool = True) -> dict[str, Any]:
    outcome = inject(pod(automount), "shop", NAMESPACE, settings)
    assert outcome.decision.result == "injected", outcome.decision
    spec = outcome.pod["spec"]
    container = next(c for c in [*spec.get("initContainers", []), *spec["containers"]]
                     if c["name"] == "shard-router")
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_without_a_directory_nothing_changes() -> None:
    assert set(sidecar_env(Settings())) == {"POD_NAME", "POD_NAMESPACE"}
    # A URL without its CA is no directory: sidecars could not trust it.
    assert set(sidecar_env(directory.settings_for(Settings(directory_url=URL), None))) == \
        {"POD_NAME", "POD_NAMESPACE"}


@pytest.mark.parametrize("automount", [True, False])
def test_the_url_and_ca_reach_the_sidecar_which_accepts_them(automount: bool) -> None:
    settings = directory.settings_for(Settings(directory_url=URL, directory_ca=CA), None)
    env = sidecar_env(settings, automount)
    assert env["SHARDMESH_DIRECTORY_URL"] == URL and env["SHARDMESH_DIRECTORY_CA"] == CA
    # The sidecar's own settings, from exactly that environment.
    parsed = build_settings(build_parser().parse_args(["--annotations-file", "/etc/shard/a"]),
                            {"POD_NAMESPACE": "shop", **{k: v for k, v in env.items()
                                                         if isinstance(v, str)}})
    assert parsed.directory_urls == (URL,) and parsed.directory_ca == CA
    assert parsed.directory_token_file == "/var/run/secrets/kubernetes.io/serviceaccount/token"


def test_the_ca_file_is_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(directory, "CHECK_S", 0.0)
    path = tmp_path / "ca-bundle.crt"
    ca_file = directory.DirectoryCA(str(path))
    settings = Settings(directory_url=URL, directory_ca_file=str(path))
    assert "SHARDMESH_DIRECTORY_URL" not in sidecar_env(directory.settings_for(settings, ca_file))
    path.write_text(CA)  # the kubelet fills the optional Secret volume in later
    assert sidecar_env(directory.settings_for(settings, ca_file))["SHARDMESH_DIRECTORY_CA"] == CA
    rotated = real_ca("rotated")
    path.write_text(rotated)
    os.utime(path, ns=(1, 1))  # a new stamp even within the clock's resolution
    assert sidecar_env(directory.settings_for(settings, ca_file))["SHARDMESH_DIRECTORY_CA"] == \
        rotated
    path.write_text("not a certificate")
    assert "SHARDMESH_DIRECTORY_URL" not in sidecar_env(directory.settings_for(settings, ca_file))


def test_flags_and_environment() -> None:
    mounted = "/etc/shardmesh/directory-ca/ca-bundle.crt"
    settings = load([], {"SHARDMESH_DIRECTORY_URL": URL, "SHARDMESH_DIRECTORY_CA_FILE": mounted})
    assert settings.directory_url == URL and settings.directory_ca_file == mounted
    with pytest.raises(ValueError, match="invalid value 'shardmesh-directory' for --directory-url"):
        load(["--directory-url", "shardmesh-directory"], {})
