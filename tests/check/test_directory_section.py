"""``shardmesh check``'s directory section, from the objects and answers it is given."""

from __future__ import annotations

from shardmesh.check_directory import (
    Answer,
    directory_findings,
    injection_findings,
    webhook_directory_url,
)

METRICS = ("# HELP x\nshardmesh_directory_subscribers 12.0\n"
           "shardmesh_directory_informers 3.0\n")


def deployment(ready: int, wanted: int = 2) -> dict[str, object]:
    return {"spec": {"replicas": wanted}, "status": {"readyReplicas": ready}}


def test_absent_directory_reports_nothing() -> None:
    assert directory_findings("sys", None, None, None) == []


def test_ready_and_reachable_shows_subscribers() -> None:
    found = directory_findings("sys", deployment(2), Answer(200, "ok"), Answer(200, METRICS))
    assert [f.status for f in found] == ["OK", "OK"]
    assert "2 of 2 replicas ready" in found[0].message
    assert "12 subscribers with 3 informers" in found[1].message


def test_unready_and_unreachable_fail_naming_the_objects() -> None:
    found = directory_findings("sys", deployment(0), Answer(503, "no endpoints"), None)
    assert [f.status for f in found] == ["FAIL", "FAIL"]
    assert "deployment sys/shardmesh-directory: 0 of 2" in found[0].message
    assert "service sys/shardmesh-directory /readyz: 503 no endpoints" in found[1].message
    partial = directory_findings("sys", deployment(1), Answer(200, "ok"), None)
    assert partial[0].status == "WARN" and partial[1].status == "OK"


def webhook(env: list[dict[str, str]], args: list[str] | None = None) -> dict[str, object]:
    container = {"name": "webhook", "args": ["webhook", *(args or [])], "env": env}
    return {"spec": {"template": {"spec": {"containers": [container]}}}}


def test_the_webhooks_directory_url_from_env_or_flag() -> None:
    url = "https://shardmesh-directory.sys.svc:443"
    assert webhook_directory_url(webhook([{"name": "SHARDMESH_DIRECTORY_URL", "value": url}])) \
        == url
    assert webhook_directory_url(webhook([], ["--directory-url", url])) == url
    assert webhook_directory_url(webhook([], [f"--directory-url={url}"])) == url
    assert webhook_directory_url(webhook([{"name": "SHARDMESH_CERT_MODE", "value": "self"}])) \
        == ""
    assert webhook_directory_url(None) == ""


def test_whether_sidecars_are_injected_to_use_the_directory() -> None:
    assert injection_findings("sys", False, "", None) == []
    unused = injection_findings("sys", True, "", None)
    assert [f.status for f in unused] == ["WARN"] and "no --directory-url" in unused[0].message
    waiting = injection_findings("sys", True, "https://d", False)
    assert waiting[0].status == "WARN" and "secret sys/shardmesh-directory-certs" in \
        waiting[0].message
    used = injection_findings("sys", True, "https://d", True)
    assert used[0].status == "OK" and "use the directory at https://d" in used[0].message
    assert "needs no RBAC for its own namespace" in used[0].message  # directory/access.py
