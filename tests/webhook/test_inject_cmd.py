"""``shardmesh inject`` on workloads, multi-document input and bad input."""

from __future__ import annotations

import copy
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shardmesh import inject_cmd

TEMPLATE = {
    "metadata": {
        "labels": {"app": "client"},
        "annotations": {"shard.io/inject": "true", "shard.io/backend": "sharded-svc:8080"},
    },
    "spec": {"containers": [{"name": "app", "image": "example.com/client:1"}]},
}


def workload(kind: str) -> dict[str, Any]:
    api = {"Job": "batch/v1", "CronJob": "batch/v1"}.get(kind, "apps/v1")
    template = copy.deepcopy(TEMPLATE)
    spec: dict[str, Any] = {"template": template}
    if kind == "CronJob":
        spec = {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}}
    return {"apiVersion": api, "kind": kind, "metadata": {"name": "client", "namespace": "shop"},
            "spec": spec}


def run(argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old, sys.stdin = sys.stdin, io.StringIO(stdin)
    try:
        code = inject_cmd.run(argv, out, err)
    finally:
        sys.stdin = old
    return code, out.getvalue(), err.getvalue()


def template_of(doc: dict[str, Any]) -> dict[str, Any]:
    path = inject_cmd.TEMPLATE_PATHS[doc["kind"]]
    for key in path:
        doc = doc[key]
    return doc


@pytest.mark.parametrize("kind", [pytest.param(k, id=k) for k in inject_cmd.TEMPLATE_PATHS])
def test_workload_templates_are_injected(kind: str) -> None:
    code, out, err = run(["-f", "-"], yaml.safe_dump(workload(kind)))
    assert code == 0, err
    template = template_of(yaml.safe_load(out))
    assert [c["name"] for c in template["spec"]["initContainers"]] == ["shard-router"]
    assert "shard.io/status" in template["metadata"]["annotations"]
    assert f"{kind}/client: injected" in err


def test_multi_document_with_namespace_and_passthrough() -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": "shop", "labels": {"shard.io/inject": "true"}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "client"},
               "spec": {"ports": [{"port": 80}]}}
    deployment = workload("Deployment")
    del template_of(deployment)["metadata"]["annotations"]["shard.io/inject"]
    other_ns = {**workload("StatefulSet"), "metadata": {"name": "elsewhere", "namespace": "other"}}
    del template_of(other_ns)["metadata"]["annotations"]["shard.io/inject"]
    text = yaml.safe_dump_all([namespace, service, deployment, other_ns])
    code, out, err = run(["-f", "-"], text)
    assert code == 0, err
    docs = list(yaml.safe_load_all(out))
    assert docs[0] == namespace and docs[1] == service
    assert "initContainers" in template_of(docs[2])["spec"], "namespace opt-in applies"
    assert docs[3] == other_ns, "a namespace without opt-in is left alone"


def test_namespace_flags_opt_in_templates() -> None:
    deployment = workload("Deployment")
    del template_of(deployment)["metadata"]["annotations"]["shard.io/inject"]
    code, out, _ = run(["-f", "-", "--namespace-label", "shard.io/inject=true"],
                       yaml.safe_dump(deployment))
    assert code == 0
    assert "initContainers" in template_of(yaml.safe_load(out))["spec"]


def test_kind_list_items_are_injected() -> None:
    doc = {"apiVersion": "v1", "kind": "List", "items": [workload("DaemonSet")]}
    code, out, _ = run(["-f", "-"], yaml.safe_dump(doc))
    assert code == 0
    assert "initContainers" in template_of(yaml.safe_load(out)["items"][0])["spec"]


def test_pre_129_puts_the_sidecar_first_among_containers() -> None:
    code, out, _ = run(["-f", "-", "--kube-version", "v1.28.4"], yaml.safe_dump(workload("Job")))
    assert code == 0
    spec = template_of(yaml.safe_load(out))["spec"]
    assert [c["name"] for c in spec["containers"]] == ["shard-router", "app"]
    assert "initContainers" not in spec


def test_rejection_prints_nothing_and_names_the_annotation(tmp_path: Path) -> None:
    good, bad = workload("Deployment"), workload("StatefulSet")
    template_of(bad)["metadata"]["annotations"]["shard.io/strategy"] = "random"
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump_all([good, bad]))
    code, out, err = run(["-f", str(path)])
    assert code == 1
    assert out == ""
    assert "StatefulSet/client: invalid value 'random' for annotation 'shard.io/strategy'" in err


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        pytest.param(["-f", "/nonexistent/app.yaml"], "", "No such file", id="missing-file"),
        pytest.param(["-f", "-"], "kind: Pod\n  bad: [", "shardmesh inject:", id="bad-yaml"),
        pytest.param(["-f", "-", "--kube-version", "one"], "", "invalid Kubernetes version 'one'",
                     id="bad-version"),
        pytest.param(["-f", "-", "--namespace-label", "novalue"], "",
                     "invalid value 'novalue' for --namespace-label", id="bad-label-flag"),
    ],
)
def test_bad_input_exits_2_with_a_message(argv: list[str], stdin: str, message: str) -> None:
    code, out, err = run(argv, stdin)
    assert code == 2
    assert message in err and out == ""


def test_command_line_entry_point() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"},
           "spec": copy.deepcopy(TEMPLATE["spec"])}
    pod["metadata"]["annotations"] = {"shard.io/inject": "maybe"}
    proc = subprocess.run([sys.executable, "-m", "shardmesh", "inject", "-f", "-"],
                          input=yaml.safe_dump(pod), capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert "invalid value 'maybe' for annotation 'shard.io/inject'" in proc.stderr


def test_a_huge_value_is_not_echoed_in_full(tmp_path: Path) -> None:
    value = "x" * (1024 * 1024)
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "p" * 10_000, "namespace": "shop",
                        "annotations": {"shard.io/inject": "true",
                                        "shard.io/backend": "sharded-svc:8080",
                                        "shard.io/key": value}},
           "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    code, out, err = run(["-f", str(path)])
    assert code == 1 and out == ""
    assert len(err) < 2000, len(err)
    assert "more bytes]' for annotation 'shard.io/key'" in err
