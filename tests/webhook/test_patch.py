"""The fast patch (diff of skeletons) equals jsonpatch's diff of the whole pods."""

from __future__ import annotations

import json
from pathlib import Path

import jsonpatch
import pytest

from tests.webhook.golden import TESTDATA, load_input
from webhook.inject import inject
from webhook.settings import Settings


def injected_cases() -> list[object]:
    return [pytest.param(p, id=p.stem) for p in sorted(TESTDATA.glob("*.yaml"))
            if (TESTDATA / f"{p.name}.patch.json").exists()]


@pytest.mark.parametrize("path", injected_cases())
@pytest.mark.parametrize("version", [pytest.param("1.28", id="1.28"),
                                     pytest.param("1.37", id="1.37")])
def test_same_operations_as_a_full_diff(path: Path, version: str) -> None:
    pod, namespace_obj, namespace = load_input(path)
    outcome = inject(pod, namespace, namespace_obj, Settings(kube_version=version))
    assert outcome.decision.result == "injected"
    full = jsonpatch.make_patch(pod, outcome.pod).patch
    as_set = lambda ops: sorted(json.dumps(op, sort_keys=True) for op in ops)  # noqa: E731
    assert as_set(outcome.patch) == as_set(full)
    assert all(op["op"] == "add" for op in outcome.patch), "injection only adds"
    assert outcome.patch[-1]["path"].endswith("shard.io~1status") or \
        outcome.patch[-1]["path"] == "/metadata/annotations", "the status comes last"
    assert jsonpatch.apply_patch(pod, outcome.patch) == outcome.pod


def test_a_rollout_diffs_once_and_gets_the_same_patch() -> None:
    from webhook import patch as patch_module

    pod, namespace_obj, namespace = load_input(TESTDATA / "several-routes.yaml")
    settings = Settings(sidecar_image="example.com/cache-test:1")
    first = inject(pod, namespace, namespace_obj, settings)
    hits = patch_module._diff_text.cache_info().hits
    second = inject(json.loads(json.dumps(pod)), namespace, namespace_obj, settings)
    assert patch_module._diff_text.cache_info().hits == hits + 2  # the sidecar and the status
    assert second.patch == first.patch
    assert second.patch is not first.patch, "callers get their own operations"
