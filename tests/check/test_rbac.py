"""What the sidecars must be allowed to read, and the fix when they cannot: pure."""

from __future__ import annotations

import pytest

from shardmesh.check_optin import opted_in
from shardmesh.check_rbac import (
    PERMISSIONS,
    Permission,
    Requirement,
    denied,
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


# --- directory mode (SPEC §7): no RBAC for the own namespace, shardmaps for others ------


def test_directory_mode_needs_nothing_for_the_own_namespace() -> None:
    scope = opted_in([namespace("a", labels=ON)],
                     [pod("p", "a", service_account="client",
                          annotations={"shard.io/backend": "svc,b=store.data:80"})],
                     frozenset())
    needed, problems = requirements(scope, directory=True)
    assert problems == []
    assert needed == [Requirement("a", "client", "data", "directory")]
    # an empty opted-in namespace needs nothing either
    empty = opted_in([namespace("e", labels=ON)], [], frozenset())
    assert requirements(empty, directory=True) == ([], [])


def test_a_route_in_direct_mode_still_needs_the_sidecar_role() -> None:
    scope = opted_in([namespace("a", labels=ON)],
                     [pod("p", "a", annotations={"shard.io/backend": "svc,b=store.data",
                                                 "shard.io/discovery.svc": "direct"})],
                     frozenset())
    needed, _ = requirements(scope, directory=True)
    assert needed == [Requirement("a", "default", "a", "direct"),
                      Requirement("a", "default", "data", "directory")]


def test_cross_namespace_directory_route_asks_for_shardmaps() -> None:
    req = Requirement("shop", "client", "bank", "directory")
    shardmaps = (Permission("shard.io", "shardmaps", "get"),
                 Permission("shard.io", "shardmaps", "watch"))
    assert denied(req, {}) == shardmaps
    assert denied(req, dict.fromkeys(shardmaps, True)) == ()
    assert denied(req, dict.fromkeys(PERMISSIONS, True)) == ()  # the old rights still do
    [finding] = rbac_findings({req: shardmaps}, "shardmesh-sidecar", False)
    assert finding.status == "FAIL"  # no "ClusterRole shardmesh-sidecar not found" line
    assert "cannot get/watch shardmaps.shard.io in namespace 'bank' (through the directory)" \
        in finding.message
    assert finding.hints == ("kubectl create rolebinding shardmesh-shardmap-reader-shop-client "
                             "-n bank --clusterrole=shardmesh-shardmap-reader "
                             "--serviceaccount=shop:client",)
    [ok] = rbac_findings({req: ()}, "shardmesh-sidecar", True)
    assert ok.status == "OK" and "shardmaps.shard.io" in ok.message
