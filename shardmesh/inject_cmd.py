"""``shardmesh inject -f FILE|-``: the webhook's exact mutation, offline.

Reads one or more YAML documents (``---`` separated, or ``kind: List``) and
injects every Pod and every pod template of a Deployment, StatefulSet,
DaemonSet, ReplicaSet, Job or CronJob with the same pipeline the webhook runs
(``webhook.inject``). Other documents pass through unchanged.

Namespaces: a ``kind: Namespace`` document in the input supplies that
namespace's labels and annotations (so ``shard.io/inject`` on it counts);
other namespaces get the ``--namespace-label``/``--namespace-annotation``
flags. An object without ``metadata.namespace`` is in ``--namespace``.

A rejection prints the webhook's message on stderr, prints nothing on stdout
and exits 1, so ``shardmesh inject -f x.yaml | kubectl apply -f -`` applies
nothing. Each decision is reported on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import yaml

from sidecar.annotations import clip
from webhook.inject import inject
from webhook.podview import Obj, metadata
from webhook.settings import Settings

#: Where each workload kind keeps its pod template.
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


class Rejected(Exception):
    """One object the webhook would deny."""


@dataclass
class Injector:
    settings: Settings
    default_namespace: str
    namespaces: dict[str, Obj]
    fallback_namespace: Obj
    log: TextIO

    def namespace_obj(self, name: str) -> Obj:
        return self.namespaces.get(name, self.fallback_namespace)

    def pod(self, pod: Obj, namespace: str, what: str) -> Obj:
        outcome = inject(pod, namespace, self.namespace_obj(namespace), self.settings)
        print(f"{what}: {outcome.decision}", file=self.log)
        if outcome.decision.result == "rejected":
            raise Rejected(f"{what}: {outcome.decision.message}")
        return outcome.pod

    def document(self, doc: Any) -> Any:
        if not isinstance(doc, dict):
            return doc
        kind = doc.get("kind")
        if kind == "List" and isinstance(doc.get("items"), list):
            return {**doc, "items": [self.document(item) for item in doc["items"]]}
        namespace = str(metadata(doc).get("namespace") or self.default_namespace)
        name = metadata(doc).get('name') or metadata(doc).get('generateName', '')
        what = clip(f"{kind}/{name}")
        if kind == "Pod":
            return self.pod(doc, namespace, what)
        path = TEMPLATE_PATHS.get(str(kind))
        if path is None:
            return doc
        return _replace_at(doc, path, lambda t: self.pod(t, namespace, what))


def _replace_at(doc: Obj, path: tuple[str, ...], fn: Any) -> Obj:
    """A copy of ``doc`` with the dict at ``path`` replaced by ``fn(it)`` (if present)."""
    head, *rest = path
    child = doc.get(head)
    if not isinstance(child, dict):
        return doc
    return {**doc, head: fn(child) if not rest else _replace_at(child, tuple(rest), fn)}


def _walk(docs: list[Any]) -> Iterator[Obj]:
    for doc in docs:
        if isinstance(doc, dict):
            yield doc
            if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
                yield from _walk(doc["items"])


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise ValueError(f"invalid value '{clip(value)}' for {flag}: expected KEY=VALUE")
        out[key] = val
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="shardmesh inject", description=__doc__.split("\n")[0])
    ap.add_argument("-f", "--filename", required=True, help="YAML file to inject, or - for stdin")
    ap.add_argument("--kube-version", default=None,
                    help="target cluster version (major.minor); before 1.29 the sidecar is a "
                         "regular container (default: native sidecar)")
    defaults = Settings()
    ap.add_argument("--sidecar-image", default=defaults.sidecar_image)
    ap.add_argument("--injector-namespace", default=defaults.injector_namespace)
    ap.add_argument("--namespace", default="default",
                    help="namespace of objects that do not name one (default: default)")
    ap.add_argument("--namespace-label", action="append", default=[], metavar="KEY=VALUE",
                    help="label of namespaces not given as a Namespace document")
    ap.add_argument("--namespace-annotation", action="append", default=[], metavar="KEY=VALUE",
                    help="annotation of namespaces not given as a Namespace document")
    return ap.parse_args(argv)


def _read(filename: str) -> list[Any]:
    if filename == "-":
        return list(yaml.safe_load_all(sys.stdin))
    with open(filename, encoding="utf-8") as f:
        return list(yaml.safe_load_all(f))


def run(argv: list[str], out: TextIO, err: TextIO) -> int:
    args = parse_args(argv)
    try:
        settings = Settings(sidecar_image=args.sidecar_image,
                            injector_namespace=args.injector_namespace,
                            kube_version=args.kube_version).validate()
        fallback = {"metadata": {
            "labels": _pairs(args.namespace_label, "--namespace-label"),
            "annotations": _pairs(args.namespace_annotation, "--namespace-annotation")}}
        docs = [d for d in _read(args.filename) if d is not None]
    except (OSError, ValueError, yaml.YAMLError) as e:
        print(f"shardmesh inject: {e}", file=err)
        return 2
    namespaces = {
        str(metadata(d).get("name")): d for d in _walk(docs) if d.get("kind") == "Namespace"
    }
    injector = Injector(settings, args.namespace, namespaces, fallback, err)
    try:
        results = [injector.document(doc) for doc in docs]
    except Rejected as e:
        print(f"shardmesh inject: rejected: {e}", file=err)
        return 1
    out.write(dump(results))
    return 0


def dump(docs: list[Any]) -> str:
    return "---\n".join(yaml.safe_dump(d, sort_keys=False, default_flow_style=False) for d in docs)


def main(argv: list[str]) -> int:
    return run(argv, sys.stdout, sys.stderr)
