"""The published vectors still hold, and the file is what the generator writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.shardfn import h64, ordinal_for

# Loaded by path: tests/ is not a package, and "generate" is too common a name to import.
_spec = importlib.util.spec_from_file_location(
    "shardmesh_vectors_generate", Path(__file__).with_name("generate.py")
)
assert _spec is not None and _spec.loader is not None
_generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_generate)
VECTORS: Path = _generate.VECTORS
render = _generate.render

DATA: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))


def test_file_is_up_to_date() -> None:
    # A stale file means clients reproduce a function the sidecar no longer runs.
    assert VECTORS.read_text(encoding="utf-8") == render(), (
        "tests/vectors/shard_vectors.json is stale: run python tests/vectors/generate.py"
    )


@pytest.mark.parametrize(
    "record", [pytest.param(r, id=f"h64-{r['input']!r}") for r in DATA["h64"]]
)
def test_h64_vector(record: dict[str, str]) -> None:
    assert f"{h64(record['input'].encode('utf-8')):016x}" == record["h64"]


def test_h64_matches_published_xxh64() -> None:
    # Independent anchors from the xxHash reference (XXH64, seed 0).
    published = {"": 0xEF46DB3751D8E999, "abc": 0x44BC2CF5AD770999}
    assert {s: h64(s.encode()) for s in published} == published


def test_every_vector_recomputes() -> None:
    drift = [
        (r["key"], r["strategy"], r["count"], r["ordinal"], got)
        for r in DATA["vectors"]
        if (got := ordinal_for(r["key"], r["strategy"], r["count"])) != r["ordinal"]
    ]
    assert not drift, f"(key, strategy, N, published, now) that drifted: {drift[:10]}"


def test_vectors_cover_every_strategy_and_count() -> None:
    combos = {(r["strategy"], r["count"]) for r in DATA["vectors"]}
    assert {s for s, _ in combos} == {"modulo", "jump", "rendezvous"}
    assert {n for _, n in combos} >= {1, 2, 3, 5, 7, 10, 100}
