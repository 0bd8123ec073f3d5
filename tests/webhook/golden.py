"""Run a golden case through the webhook (Flask) path and the offline inject path.

Case format (``testdata/inject/<case>.yaml``): YAML documents; an optional
``kind: Namespace`` gives the pod's namespace its labels and annotations, and
exactly one ``kind: Pod`` is the pod under review (its ``metadata.namespace``,
or ``default``, is the review's namespace).

Golden files next to it:
- ``<case>.yaml.injected``: ``# decision: <result>[: <reason>]``, then either
  the offline output (admitted) or the denial message (rejected);
- ``<case>.yaml.patch.json``: the webhook's JSON patch (injected cases only).
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from flask.testing import FlaskClient

from shardmesh import inject_cmd
from webhook import patch
from webhook.server import create_app
from webhook.settings import Settings

TESTDATA = Path(__file__).parent / "testdata" / "inject"
Obj = dict[str, Any]


@dataclass(frozen=True)
class Case:
    """Per-case knobs for the few cases that need them."""

    kube_version: str | None = None
    dry_run: bool = False

    def settings(self) -> Settings:
        return Settings(kube_version=self.kube_version)

    def inject_flags(self) -> list[str]:
        return ["--kube-version", self.kube_version] if self.kube_version else []


@dataclass(frozen=True)
class WebhookResult:
    decision: str
    allowed: bool
    pod: Obj | None
    message: str
    patch: patch.Patch


@dataclass(frozen=True)
class OfflineResult:
    code: int
    stdout: str
    stderr: str


def load_input(path: Path) -> tuple[Obj, Obj, str]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    pods = [d for d in docs if d.get("kind") == "Pod"]
    assert len(pods) == 1, f"{path.name}: expected exactly one Pod document"
    namespaces = [d for d in docs if d.get("kind") == "Namespace"]
    pod = pods[0]
    name = (pod.get("metadata") or {}).get("namespace") or "default"
    return pod, (namespaces[0] if namespaces else {}), name


def review(pod: Obj, namespace: str, dry_run: bool) -> Obj:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": None,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def client_for(case: Case, namespace_obj: Obj) -> FlaskClient:
    name = (namespace_obj.get("metadata") or {}).get("name")
    app = create_app(case.settings(), lambda ns: namespace_obj if ns == name else {})
    return app.test_client()


def through_webhook(path: Path, case: Case) -> WebhookResult:
    pod, namespace_obj, namespace = load_input(path)
    body = review(pod, namespace, case.dry_run)
    resp = client_for(case, namespace_obj).post("/mutate", json=body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    answer = resp.get_json()["response"]
    assert answer["uid"] == body["request"]["uid"]
    decision = answer["auditAnnotations"]["decision"]
    if not answer["allowed"]:
        return WebhookResult(decision, False, None, answer["status"]["message"], [])
    ops = json.loads(base64.b64decode(answer["patch"])) if "patch" in answer else []
    return WebhookResult(decision, True, patch.apply(pod, ops), "", ops)


def offline(text_or_path: str | Path, case: Case) -> OfflineResult:
    out, err = io.StringIO(), io.StringIO()
    if isinstance(text_or_path, Path):
        code = inject_cmd.run(["-f", str(text_or_path), *case.inject_flags()], out, err)
    else:
        import sys

        old, sys.stdin = sys.stdin, io.StringIO(text_or_path)
        try:
            code = inject_cmd.run(["-f", "-", *case.inject_flags()], out, err)
        finally:
            sys.stdin = old
    return OfflineResult(code, out.getvalue(), err.getvalue())


def golden_text(webhook: WebhookResult, off: OfflineResult) -> str:
    body = off.stdout if webhook.allowed else webhook.message + "\n"
    return f"# decision: {webhook.decision}\n{body}"


def pod_of(yaml_text: str) -> Obj:
    pods = [d for d in yaml.safe_load_all(yaml_text) if d and d.get("kind") == "Pod"]
    assert len(pods) == 1
    return pods[0]
