"""Run ``shardmesh check`` as a user would, against a test control plane, and pick findings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shardmesh.check import main


def check(control_plane: Any, capsys: pytest.CaptureFixture[str], *args: str
          ) -> tuple[int, list[dict[str, Any]]]:
    """Run the real CLI entry with --json; returns (exit code, findings)."""
    code = main([*args, "--json", "--kubeconfig", str(control_plane.kubeconfig)])
    return code, json.loads(capsys.readouterr().out)["findings"]


def only(findings: list[dict[str, Any]], check_name: str, needle: str = "") -> dict[str, Any]:
    matches = [f for f in findings if f["check"] == check_name and needle in f["message"]]
    assert len(matches) == 1, f"expected one {check_name} finding with {needle!r}: {findings}"
    return matches[0]
