"""The injected container, as the webhook renders it, runs here only if it is right.

The pod comes from the webhook's own pure injection (what ``/mutate`` and
``shardmesh inject`` return), so a change there is seen here without a cluster.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from sidecar.downward import parse_downward_file
from tests.e2e import injected, podspec
from tests.e2e.story import client_annotations
from webhook.inject import inject
from webhook.settings import Settings


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    raw = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "client-1", "namespace": "shop", "uid": "u-1",
                        "annotations": {**client_annotations(), "shard.io/inject": "true"}},
           "spec": {"serviceAccountName": "client",
                    "containers": [{"name": "app", "image": "example.invalid/client:1"}]}}
    outcome = inject(raw, "shop", {"metadata": {"name": "shop"}}, Settings(kube_version="1.37"))
    assert outcome.decision.result == "injected", outcome.decision
    final: dict[str, Any] = outcome.pod
    return final


def sidecar_of(pod: dict[str, Any]) -> dict[str, Any]:
    return podspec.find_container(pod)[0]


def test_plan_runs_the_container_as_injected(pod: dict[str, Any], tmp_path: Path) -> None:
    how = injected.plan(pod, tmp_path)
    assert how.injected == podspec.argv(sidecar_of(pod))
    assert how.env["POD_NAME"] == "client-1" and how.env["POD_NAMESPACE"] == "shop"
    files = [Path(a) for a in how.args if a.startswith(str(tmp_path))]
    assert len(files) == 1, how.args
    assert parse_downward_file(files[0].read_text()) == pod["metadata"]["annotations"]
    assert how.args[-4:] == ["--listen", f"127.0.0.1:{how.listen_port}",
                             "--admin", f"127.0.0.1:{how.admin_port}"]


def broken(pod: dict[str, Any], change: Any) -> dict[str, Any]:
    doctored = copy.deepcopy(pod)
    change(sidecar_of(doctored))
    return doctored


@pytest.mark.parametrize(("change", "needle"), [
    pytest.param(lambda c: c.update(command=["shardmesh", "sidecar", "--annotations-file",
                                             "/etc/other/annotations"]),
                 "names none of the downward API mounts", id="annotations-file-elsewhere"),
    pytest.param(lambda c: c["readinessProbe"]["httpGet"].update(port=15021),
                 "is not the sidecar's admin port", id="probe-on-another-port"),
    pytest.param(lambda c: c.pop("readinessProbe"), "no readinessProbe", id="no-probe"),
])
def test_a_wrongly_injected_container_is_refused(pod: dict[str, Any], tmp_path: Path,
                                                 change: Any, needle: str) -> None:
    with pytest.raises(injected.SidecarFailed, match=needle):
        injected.plan(broken(pod, change), tmp_path)
