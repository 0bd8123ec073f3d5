"""What the sidecars must be allowed to read, and the fix when they cannot: pure."""

from __future__ import annotations

import pytest

from shardmesh.check_optin import opted_in
from shardmesh.check_rbac import (
    PERMISSIONS,
    Permission,
    Requirement,
    rbac_findings,
    requirements,
    rolebinding_command,
)
from tests.check.objects import namespace, pod

ON = {"shard.io/inject": "true"}


def reqs(namespaces, pods):  # type: ignore[no-untyped-def]
    return requirements(opted_in(namespaces, pods, frozenset()))


@pytest.mark.parametrize(("namespaces", "pods", "expected"), [
    pytest.param([namespace("a", labels=ON)], [], [("a", "default", "a")],
                 id="empty-namespace-checks-default"),
    pytest.param([namespace("a", labels=ON)], [pod("p", "a", service_account="client")],
                 [("a", "client", "a")], id="pod-service-account"),
    pytest.param([namespace("a", labels=ON)],
                 [pod("p", "a", annotations={"shard.io/backend": "svc,b=store.data:80"})],
                 [("a", "default", "a"), ("a", "default", "data")], id="route-namespaces"),
    pytest.param([namespace("a", labels=ON)],
                 [pod("p", "a", service_account="x",
                      annotations={"shard.io/backend": "store.data"}),
                  pod("q", "a", service_account="y")],
                 [("a", "x", "data"), ("a", "y", "a")], id="per-service-account"),
    pytest.param([namespace("a")], [pod("p", "a", annotations={"shard.io/inject": "false"})], [],
                 id="nothing-opted-in"),
])
def test_requirements(namespaces, pods, expected) -> None:  # type: ignore[no-untyped-def]
    needed, problems = reqs(namespaces, pods)
    assert [(r.namespace, r.service_account, r.target) for r in needed] == expected
    assert problems == []


def test_unparsable_backend_is_a_warning_naming_the_pod() -> None:
    needed, problems = reqs([namespace("a", labels=ON)],
                            [pod("p", "a", annotations={"shard.io/backend": "Bad_Name"})])
    assert [(r.namespace, r.target) for r in needed] == [("a", "a")]
    [problem] = problems
    assert problem.status == "WARN" and "pod a/p" in problem.message
    assert "invalid value 'Bad_Name' for annotation 'shard.io/backend'" in problem.message


def test_subject_is_the_service_account_with_its_groups() -> None:
    req = Requirement("a", "client", "b")
    assert req.user == "system:serviceaccount:a:client"
    assert "system:serviceaccounts:a" in req.groups


def test_allowed_is_ok_denied_fails_with_the_rolebinding() -> None:
    ok, bad = Requirement("a", "default", "a"), Requirement("a", "client", "data")
    denied = (Permission("apps", "statefulsets", "list"),
              Permission("apps", "statefulsets", "watch"), Permission("", "pods", "get"))
    findings = rbac_findings({ok: (), bad: denied}, "shardmesh-sidecar", True)
    assert [f.status for f in findings] == ["FAIL", "OK"]  # sorted by namespace, account
    fail = findings[0]
    assert "service account 'client' in namespace 'a'" in fail.message
    assert "list/watch statefulsets.apps; get pods in namespace 'data'" in fail.message
    assert fail.hints == (rolebinding_command(bad, "shardmesh-sidecar"),)
    assert fail.hints[0] == ("kubectl create rolebinding shardmesh-sidecar-a-client -n data "
                             "--clusterrole=shardmesh-sidecar --serviceaccount=a:client")


def test_same_namespace_binding_name() -> None:
    command = rolebinding_command(Requirement("a", "default", "a"), "role")
    assert command.startswith("kubectl create rolebinding role-default -n a ")


@pytest.mark.parametrize(("denied", "exists", "role_fail"), [
    pytest.param(PERMISSIONS, False, True, id="denied-and-role-missing"),
    pytest.param(PERMISSIONS, True, False, id="denied-role-present"),
    pytest.param((), False, False, id="allowed-role-irrelevant"),
])
def test_missing_clusterrole_reported_only_when_it_matters(
    denied: tuple[Permission, ...], exists: bool, role_fail: bool
) -> None:
    findings = rbac_findings({Requirement("a", "default", "a"): denied}, "sm-sidecar", exists)
    assert any("ClusterRole 'sm-sidecar' not found" in f.message for f in findings) == role_fail
