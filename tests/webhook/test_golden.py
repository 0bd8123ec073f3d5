"""Golden injection tests, istio style: every ``testdata/inject/*.yaml`` is run
through the webhook (HTTP, Flask test client) and through ``shardmesh inject``,
and both must match the golden files. ``REFRESH_GOLDEN=1`` rewrites them.

Cases need no entry below unless they need a knob; a golden file without an
input, or of the wrong kind for its result, fails the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.webhook.golden import TESTDATA, Case, golden_text, offline, pod_of, through_webhook

REFRESH = os.environ.get("REFRESH_GOLDEN", "").lower() in ("1", "true", "yes")

#: Only the cases that need a setting; every other input is picked up as Case().
EXPLICIT: dict[str, Case] = {
    "pre-1.29-regular-container": Case(kube_version="1.28"),
    "dry-run": Case(dry_run=True),
}


def inputs() -> list[Path]:
    return sorted(TESTDATA.glob("*.yaml"))


def case_params() -> list[object]:
    return [pytest.param(p, EXPLICIT.get(p.stem, Case()), id=p.stem) for p in inputs()]


def check_or_refresh(path: Path, actual: str) -> None:
    if REFRESH:
        path.write_text(actual)
        return
    assert path.exists(), f"missing golden file {path.name}; run with REFRESH_GOLDEN=1"
    assert path.read_text() == actual, f"{path.name} is stale; run with REFRESH_GOLDEN=1"


@pytest.mark.parametrize(("path", "case"), case_params())
def test_golden(path: Path, case: Case) -> None:
    webhook = through_webhook(path, case)
    off = offline(path, case)
    assert (off.code == 0) == webhook.allowed, off.stderr
    check_or_refresh(path.with_name(path.name + ".injected"), golden_text(webhook, off))
    patch_file = path.with_name(path.name + ".patch.json")
    if webhook.patch:
        check_or_refresh(patch_file, json.dumps(webhook.patch, indent=2) + "\n")
    elif REFRESH:
        patch_file.unlink(missing_ok=True)
    else:
        assert not patch_file.exists(), f"{patch_file.name} is stale: nothing is patched now"
    if webhook.allowed:
        # Both paths store the very same pod.
        assert webhook.pod == pod_of(off.stdout)
        assert f": {webhook.decision}" in off.stderr
    else:
        assert webhook.message in off.stderr
        assert off.stdout == ""


def admitted_params() -> list[object]:
    """Cases whose golden output is a pod (a rejection has nothing to re-inject)."""
    return [
        p for p in case_params()
        if not _golden_header(p.values[0]).startswith("# decision: rejected")  # type: ignore[attr-defined]
    ]


def _golden_header(path: Path) -> str:
    golden = path.with_name(path.name + ".injected")
    return golden.read_text().partition("\n")[0] if golden.exists() else ""


@pytest.mark.parametrize(("path", "case"), admitted_params())
def test_reinjecting_changes_nothing(path: Path, case: Case) -> None:
    first = offline(path, case)
    assert first.code == 0, first.stderr
    second = offline(first.stdout, case)
    assert second.code == 0, second.stderr
    assert second.stdout == first.stdout
    if first.stderr.endswith(": injected\n"):
        assert second.stderr.endswith(": skipped: already_injected\n")


def test_no_orphaned_golden_files() -> None:
    known = {p.name for p in inputs()}
    orphans = [
        p.name for p in TESTDATA.iterdir()
        if p.suffix != ".yaml" and p.name.split(".yaml")[0] + ".yaml" not in known
    ]
    assert not orphans, f"golden files without an input: {orphans}"


def test_explicit_cases_exist() -> None:
    missing = [name for name in EXPLICIT if not (TESTDATA / f"{name}.yaml").exists()]
    assert not missing, f"EXPLICIT names cases with no input: {missing}"


def test_every_invalid_case_names_annotation_and_value() -> None:
    for path in TESTDATA.glob("invalid-*.yaml"):
        golden = path.with_name(path.name + ".injected").read_text()
        assert golden.startswith("# decision: rejected: "), path.name
        assert "shard.io/" in golden and "'" in golden, path.name
