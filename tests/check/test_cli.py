"""The ``shardmesh check`` command line and its output, without a cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardmesh.check import main, render_json, render_text, settings_from
from shardmesh.check_model import FAIL, OK, WARN, Finding

FINDINGS = [
    Finding(OK, "webhook", "webhook 'a' answered 200"),
    Finding(WARN, "ca-bundle", "caBundle expires soon", ("renew it",)),
    Finding(FAIL, "sidecar", "namespace 'shop': pod web-1 lacks shard-router",
            ("kubectl rollout restart deployment/web -n shop",)),
]


def test_text_has_one_line_per_finding_hints_below_and_a_summary() -> None:
    lines = render_text(FINDINGS).splitlines()
    assert lines[0].startswith("OK    webhook") and lines[0].endswith("answered 200")
    assert lines[1].startswith("WARN  ca-bundle")
    assert lines[2].strip() == "-> renew it"
    assert lines[3].startswith("FAIL  sidecar") and "web-1" in lines[3]
    assert lines[-1] == "shardmesh check: 1 OK, 1 WARN, 1 FAIL -> FAIL"


def test_json_carries_the_overall_status_and_every_finding() -> None:
    doc = json.loads(render_json(FINDINGS))
    assert doc["status"] == "FAIL"
    assert [f["status"] for f in doc["findings"]] == ["OK", "WARN", "FAIL"]
    assert doc["findings"][2]["hints"] == ["kubectl rollout restart deployment/web -n shop"]


def test_defaults_match_the_installed_names() -> None:
    settings = settings_from([])
    assert settings.webhook_config == "shardmesh-sidecar-injector"
    assert settings.sidecar_clusterrole == "shardmesh-sidecar"
    assert (settings.expiry_warn_days, settings.json, settings.namespaces) == (30, False, ())
    assert settings.injector_namespace == "shardmesh-system"


def test_unreadable_kubeconfig_exits_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["--kubeconfig", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"cannot load {missing}" in err


def test_negative_warn_days_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        settings_from(["--expiry-warn-days", "-1"])
    assert exit_.value.code == 2
    assert "--expiry-warn-days must be >= 0, got -1" in capsys.readouterr().err


def test_unreachable_api_server_is_one_fail_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.check.tls import closed_port

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {
            "server": f"https://127.0.0.1:{closed_port()}", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))
    assert main(["--kubeconfig", str(kubeconfig), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    [finding] = doc["findings"]
    assert finding["status"] == "FAIL" and "cannot reach the API server" in finding["message"]
