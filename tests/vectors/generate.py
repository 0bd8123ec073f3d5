"""Regenerate ``shard_vectors.json``: the published key -> ordinal test vectors.

Run ``python tests/vectors/generate.py`` after an
intentional change to ``sidecar.shardfn``; ``test_shard_vectors.py`` fails
whenever the function and the file disagree. A change here breaks every client
that reproduces the function, so it needs a very good reason.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sidecar.shardfn import STRATEGIES, h64, ordinal_for  # noqa: E402

VECTORS = Path(__file__).with_name("shard_vectors.json")

#: Keys chosen for the edges a reimplementation gets wrong.
KEYS: tuple[str, ...] = (
    "0", "1", "2", "7", "42", "99", "100", "12345",
    "18446744073709551615",                       # 2**64 - 1
    "18446744073709551616",                       # 2**64
    "340282366920938463463374607431768211457",    # 2**128 + 1
    "-1", "-7", "-0", "-18446744073709551617",    # negatives, -0, -(2**64 + 1)
    "007", "000", "0042",                         # leading zeros
    "+5", "1.5", "1e3", " 7", "0x1F",             # look numeric, are strings
    "user-1", "account:9f86d081", "abc", "ABC",
    "é", "ünïcödé", "日本", "🙂", "ﬁ",             # non-ASCII (NFC/NFKC are not applied)
    " ", "  ", "\t", "-", "_",                    # empty-ish
)
COUNTS: tuple[int, ...] = (1, 2, 3, 5, 7, 10, 100)
H64_INPUTS: tuple[str, ...] = ("", "a", "abc", "7", "user-1", "日本", "🙂")


def build() -> dict[str, Any]:
    return {
        "description": (
            "shardmesh key -> ordinal test vectors. Keys are UTF-8 strings; integer keys "
            "(ASCII -?[0-9]+) are canonicalised to str(int(key)). h64 is XXH64 seed 0, "
            "given as 16 hex digits. See sidecar/shardfn.py for the definitions."
        ),
        "h64": [{"input": s, "h64": f"{h64(s.encode('utf-8')):016x}"} for s in H64_INPUTS],
        "vectors": [
            {"key": key, "strategy": strategy, "count": count,
             "ordinal": ordinal_for(key, strategy, count)}
            for key in KEYS for strategy in STRATEGIES for count in COUNTS
        ],
    }


def render() -> str:
    """JSON with one record per line, so a diff shows exactly which vectors moved."""
    data = build()
    dump = lambda value: json.dumps(value, ensure_ascii=False)  # noqa: E731
    lines = ["{", f' "description": {dump(data["description"])},', ' "h64": [']
    lines.append(",\n".join(f"  {dump(r)}" for r in data["h64"]))
    lines += [" ],", ' "vectors": [']
    lines.append(",\n".join(f"  {dump(r)}" for r in data["vectors"]))
    lines += [" ]", "}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    VECTORS.write_text(render(), encoding="utf-8")
    print(f"wrote {len(build()['vectors'])} vectors to {VECTORS}")
