"""Which pods should carry shard-router, and the report on those that do not: pure."""

from __future__ import annotations

import pytest

from shardmesh.check_optin import opted_in, restart_hint, sidecar_findings
from tests.check.objects import namespace, pod

ON = {"shard.io/inject": "true"}
OFF = {"shard.io/inject": "false"}


@pytest.mark.parametrize(("namespaces", "pods", "expected_ns", "expected_pods"), [
    pytest.param([namespace("a", annotations=ON)], [pod("p", "a")], ("a",), ["p"],
                 id="namespace-annotation"),
    pytest.param([namespace("a", labels=ON)], [pod("p", "a")], ("a",), ["p"],
                 id="namespace-label"),
    pytest.param([namespace("a")], [pod("p", "a", annotations=ON), pod("q", "a")], ("a",), ["p"],
                 id="pod-opts-in-its-namespace-only-itself"),
    pytest.param([namespace("a")], [pod("p", "a", labels=ON)], ("a",), ["p"], id="pod-label"),
    pytest.param([namespace("a", labels=ON)], [pod("p", "a", annotations=OFF), pod("q", "a")],
                 ("a",), ["q"], id="pod-opt-out-beats-namespace"),
    pytest.param([namespace("a", labels=ON)], [], ("a",), [], id="opted-in-but-empty"),
    pytest.param([namespace("a")], [pod("p", "a")], (), [], id="nothing-opted-in"),
    pytest.param([namespace("a", labels=ON)],
                 [pod("host", "a", host_network=True),
                  pod("mirror", "a", annotations={"kubernetes.io/config.mirror": "x"}),
                  pod("done", "a", phase="Succeeded"), pod("going", "a", deleting=True),
                  pod("p", "a")], ("a",), ["p"], id="skip-rules"),
    pytest.param([namespace("kube-system", labels=ON)], [pod("p", "kube-system", labels=ON)],
                 (), [], id="system-namespace-never"),
    pytest.param([namespace("a", labels={**ON, "shard.io/admission-webhooks": "disabled"})],
                 [pod("p", "a", labels=ON)], (), [], id="webhooks-disabled-label"),
    pytest.param([namespace("shardmesh-system", labels=ON)], [pod("p", "shardmesh-system")],
                 (), [], id="injector-namespace-never"),
])
def test_scope(namespaces, pods, expected_ns, expected_pods) -> None:  # type: ignore[no-untyped-def]
    scope = opted_in(namespaces, pods, frozenset({"shardmesh-system"}))
    assert scope.namespaces == expected_ns
    got = [p["metadata"]["name"] for ns in scope.namespaces for p in scope.pods[ns]]
    assert got == expected_pods
    assert scope.problems == ()


def test_invalid_inject_value_is_reported_not_fatal() -> None:
    scope = opted_in([namespace("a", labels={"shard.io/inject": "yes"})],
                     [pod("p", "a", annotations={"shard.io/inject": "1"})], frozenset())
    assert scope.namespaces == ()
    messages = [f.message for f in scope.problems]
    assert any("namespace 'a'" in m and "invalid value 'yes'" in m for m in messages)
    assert any("pod a/p" in m and "invalid value '1'" in m for m in messages)
    assert {f.status for f in scope.problems} == {"WARN"}


def test_annotation_and_label_that_disagree_are_reported_like_the_webhook_does() -> None:
    scope = opted_in([namespace("a")], [pod("p", "a", annotations=ON, labels=OFF)], frozenset())
    [problem] = scope.problems
    assert problem.status == "WARN" and problem.message.startswith("pod a/p: annotation")
    assert scope.namespaces == ()


@pytest.mark.parametrize(("sidecar_in", "missing"), [
    pytest.param("initContainers", False, id="native-sidecar"),
    pytest.param("containers", False, id="regular-container"),
    pytest.param(None, True, id="absent"),
])
def test_sidecar_detection(sidecar_in: str | None, missing: bool) -> None:
    kwargs = {"init": ("shard-router",)} if sidecar_in == "initContainers" else (
        {"containers": ("shard-router", "app")} if sidecar_in else {})
    scope = opted_in([namespace("a", labels=ON)], [pod("p", "a", **kwargs)], frozenset())
    [finding] = sidecar_findings(scope)
    assert finding.status == ("FAIL" if missing else "OK")
    assert "namespace 'a'" in finding.message


def test_missing_pods_listed_by_name_with_one_hint_per_workload() -> None:
    pods = [pod("web-7d9-aaaaa", "shop", labels={"pod-template-hash": "7d9"},
                owner=("ReplicaSet", "web-7d9")),
            pod("web-7d9-bbbbb", "shop", labels={"pod-template-hash": "7d9"},
                owner=("ReplicaSet", "web-7d9")),
            pod("ok", "shop", init=("shard-router",))]
    [finding] = sidecar_findings(opted_in([namespace("shop", labels=ON)], pods, frozenset()))
    assert finding.status == "FAIL"
    assert "2 of 3 opted-in pod(s)" in finding.message
    assert finding.message.endswith(": web-7d9-aaaaa, web-7d9-bbbbb")
    assert finding.hints == ("kubectl rollout restart deployment/web -n shop",)


def test_no_opted_in_namespace_is_ok() -> None:
    [finding] = sidecar_findings(opted_in([namespace("a")], [], frozenset()))
    assert finding.status == "OK" and "no opted-in namespaces" in finding.message


@pytest.mark.parametrize(("kwargs", "expected"), [
    pytest.param({"owner": ("StatefulSet", "db")}, "kubectl rollout restart statefulset/db -n n",
                 id="statefulset"),
    pytest.param({"owner": ("DaemonSet", "agent")}, "kubectl rollout restart daemonset/agent -n n",
                 id="daemonset"),
    pytest.param({"owner": ("ReplicaSet", "web-abc"), "labels": {"pod-template-hash": "abc"}},
                 "kubectl rollout restart deployment/web -n n", id="deployment"),
    pytest.param({"owner": ("ReplicaSet", "bare")},
                 "kubectl delete pod p -n n (its ReplicaSet bare re-creates it)", id="bare-rs"),
    pytest.param({"owner": ("Job", "j")}, "kubectl delete pod p -n n (its Job j re-creates it)",
                 id="job"),
    pytest.param({}, "kubectl delete pod p -n n, then create it again (it has no controller)",
                 id="bare-pod"),
])
def test_restart_hint(kwargs, expected: str) -> None:  # type: ignore[no-untyped-def]
    assert restart_hint(pod("p", "n", **kwargs)) == expected
