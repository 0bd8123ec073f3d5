"""Who may read which shard map (directory.access): the pure rule, no cluster."""

from __future__ import annotations

import pytest

from directory.access import (
    Need,
    alternatives,
    direct_watch_needs,
    missing,
    same_namespace,
    service_account_namespace,
    shardmap_need,
)

SA_GROUPS = ("system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated")


def test_a_service_account_reads_its_own_namespace_without_review() -> None:
    assert same_namespace("system:serviceaccount:shop:client", SA_GROUPS, "shop")
    assert not same_namespace("system:serviceaccount:shop:client", SA_GROUPS, "bank")


@pytest.mark.parametrize("username,groups", [
    ("alice", ("system:authenticated",)),                      # a person: review
    ("system:serviceaccount:shop:client", ("system:authenticated",)),  # no SA group
    ("system:serviceaccount:shop", SA_GROUPS),                 # malformed
    ("system:serviceaccount::client", SA_GROUPS),
    ("system:serviceaccount:bank:client", SA_GROUPS),          # group of another namespace
])
def test_anything_else_is_not_a_service_account_of_the_namespace(
        username: str, groups: tuple[str, ...]) -> None:
    assert not same_namespace(username, groups, "shop")
    assert not same_namespace(username, groups, "bank") or username.endswith("bank:client")


def test_service_account_namespace() -> None:
    assert service_account_namespace("system:serviceaccount:shop:a", SA_GROUPS) == "shop"
    assert service_account_namespace("system:serviceaccounts:shop", SA_GROUPS) is None


def test_the_shardmaps_grant_suffices_for_its_verb() -> None:
    for verb in ("get", "watch"):
        need = shardmap_need(verb, "ledger")
        assert need == Need(verb, "shard.io", "shardmaps", "ledger")
        assert missing(verb, "ledger", "bank", {need: True}) == ()
    # get does not give watch, nor another StatefulSet's map
    assert missing("watch", "ledger", "bank", {shardmap_need("get", "ledger"): True})
    assert missing("get", "ledger", "bank", {shardmap_need("get", "other"): True})


def test_the_old_direct_watch_rights_still_suffice_but_only_all_of_them() -> None:
    old = direct_watch_needs("ledger")
    assert missing("watch", "ledger", "bank", dict.fromkeys(old, True)) == ()
    partial = dict.fromkeys(old, True) | {Need("watch", "", "pods"): False}
    assert missing("watch", "ledger", "bank", partial) == (
        "watch shardmaps.shard.io 'ledger' in namespace 'bank'",)


def test_a_denial_names_exactly_the_shardmaps_permission() -> None:
    assert missing("watch", "ledger", "bank", {}) == (
        "watch shardmaps.shard.io 'ledger' in namespace 'bank'",)
    assert missing("get", "ledger", "bank", {}) == (
        "get shardmaps.shard.io 'ledger' in namespace 'bank'",)


def test_only_get_and_watch_read_a_map() -> None:
    with pytest.raises(ValueError, match="'list'"):
        alternatives("list", "ledger")
