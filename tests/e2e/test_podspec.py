"""The stand-in kubelet's pure parts: argv, env, downward API files and the path mapping."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.downward import parse_downward_file
from tests.e2e import podspec

ANNOTATIONS = {"shard.io/backend": "bank=sharded-svc:8080", "note": 'says "hi"\n'}


def pod(container: dict[str, Any], volumes: list[dict[str, Any]] | None = None,
        native: bool = True) -> dict[str, Any]:
    field = "initContainers" if native else "containers"
    spec: dict[str, Any] = {field: [container], "volumes": volumes or [],
                            "serviceAccountName": "client"}
    if native:
        spec["containers"] = [{"name": "app"}]
    return {"metadata": {"name": "client-x", "namespace": "shop", "uid": "u-1",
                         "annotations": ANNOTATIONS, "labels": {"app": "client"}},
            "spec": spec, "status": {"podIP": "127.0.0.9"}}


def field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


@pytest.mark.parametrize("native", [pytest.param(True, id="native-sidecar"),
                                    pytest.param(False, id="regular-container")])
def test_find_container_in_either_list(native: bool) -> None:
    container, is_init = podspec.find_container(pod({"name": "shard-router"}, native=native))
    assert container["name"] == "shard-router" and is_init is native


def test_missing_container_is_named() -> None:
    with pytest.raises(podspec.PodSpecError, match="no container named 'shard-router'"):
        podspec.find_container(pod({"name": "other"}))


@pytest.mark.parametrize(("container", "expected"), [
    pytest.param({"command": ["a", "b"], "args": ["c"]}, ["a", "b", "c"], id="command-and-args"),
    pytest.param({"args": ["sidecar"]}, ["shardmesh", "sidecar"], id="args-after-entrypoint"),
    pytest.param({"command": ["x"]}, ["x"], id="command-only"),
])
def test_argv_follows_kubernetes_rules(container: dict[str, Any], expected: list[str]) -> None:
    assert podspec.argv(container) == expected


@pytest.mark.parametrize(("path", "expected"), [
    pytest.param("metadata.name", "client-x", id="name"),
    pytest.param("metadata.namespace", "shop", id="namespace"),
    pytest.param("metadata.labels['app']", "client", id="one-label"),
    pytest.param("spec.serviceAccountName", "client", id="service-account"),
    pytest.param("status.podIP", "127.0.0.9", id="pod-ip"),
])
def test_field_values(path: str, expected: str) -> None:
    assert podspec.field_value(pod({"name": "c"}), path) == expected


def test_environment_resolves_field_refs_and_keeps_values() -> None:
    container = {"name": "shard-router", "env": [
        field_env("POD_NAME", "metadata.name"), field_env("POD_NAMESPACE", "metadata.namespace"),
        {"name": "PLAIN", "value": "1"}]}
    assert podspec.environment(pod(container), container) == {
        "POD_NAME": "client-x", "POD_NAMESPACE": "shop", "PLAIN": "1"}


@pytest.mark.parametrize("var", [
    pytest.param({"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                 id="secret-ref"),
    pytest.param(field_env("X", "spec.bogus"), id="unknown-field-path"),
])
def test_environment_refuses_what_it_cannot_resolve(var: dict[str, Any]) -> None:
    container = {"name": "shard-router", "env": [var]}
    with pytest.raises(podspec.PodSpecError):
        podspec.environment(pod(container), container)


def test_downward_files_of_plain_and_projected_volumes() -> None:
    container = {"name": "shard-router", "volumeMounts": [
        {"name": "info", "mountPath": "/etc/shard"},
        {"name": "token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}
    volumes = [
        {"name": "info", "downwardAPI": {"items": [
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]}},
        {"name": "token", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token"}},
            {"downwardAPI": {"items": [
                {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}},
    ]
    files = podspec.downward_files(pod(container, volumes), container)
    by_path = {(f.mount_path, f.relative_path): f.content for f in files}
    assert parse_downward_file(by_path[("/etc/shard", "annotations")]) == ANNOTATIONS
    assert by_path[("/var/run/secrets/kubernetes.io/serviceaccount", "namespace")] == "shop"
    assert len(files) == 2


def test_mount_of_a_missing_volume_is_named() -> None:
    container = {"name": "shard-router", "volumeMounts": [{"name": "gone", "mountPath": "/x"}]}
    with pytest.raises(podspec.PodSpecError, match="'gone'"):
        podspec.downward_files(pod(container), container)


@pytest.mark.parametrize(("args", "expected", "used"), [
    pytest.param(["--annotations-file", "/etc/shard/annotations"],
                 ["--annotations-file", "/tmp/v/annotations"], {"/etc/shard"}, id="separate"),
    pytest.param(["--annotations-file=/etc/shard/annotations"],
                 ["--annotations-file=/tmp/v/annotations"], {"/etc/shard"}, id="equals"),
    pytest.param(["--annotations-file", "/etc/shardx/annotations"],
                 ["--annotations-file", "/etc/shardx/annotations"], set(), id="prefix-not-a-dir"),
    pytest.param(["--annotations-file", "/wrong/annotations"],
                 ["--annotations-file", "/wrong/annotations"], set(), id="wrong-path-untouched"),
])
def test_translate_maps_only_mount_paths(args: list[str], expected: list[str],
                                         used: set[str]) -> None:
    assert podspec.translate(args, {"/etc/shard": "/tmp/v"}) == (expected, used)


@pytest.mark.parametrize(("args", "expected"), [
    pytest.param(["--listen", "a:1"], "a:1", id="separate"),
    pytest.param(["--listen=a:1", "--listen", "b:2"], "b:2", id="last-wins"),
    pytest.param(["--admin", "a:1"], None, id="absent"),
])
def test_flag_value(args: list[str], expected: str | None) -> None:
    assert podspec.flag_value(args, "--listen") == expected
