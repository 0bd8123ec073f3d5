"""Build hook: the sidecar's data plane is compiled with mypyc.

The listed modules are ordinary, mypy --strict Python. mypyc turns them into C
extensions, which roughly halves the proxy's CPU per request (bench/sidecar.py).
Without a C compiler, or with SHARDMESH_PURE_PYTHON=1, the same modules run as
plain Python, only slower.
``make compile`` (part of ``make test``) builds them in place for development.
"""

from __future__ import annotations

import os

from setuptools import setup

#: The request path: everything a proxied request runs through.
COMPILED = [
    "sidecar/http11.py",
    "sidecar/errors.py",
    "sidecar/keys.py",
    "sidecar/shardfn.py",
    "sidecar/shardmap.py",
    "sidecar/metrics.py",
    "sidecar/upstream.py",
    "sidecar/exchange.py",
    "sidecar/proxy.py",
]


def ext_modules() -> list[object]:
    if os.environ.get("SHARDMESH_PURE_PYTHON") == "1":
        return []
    from mypyc.build import mypycify

    return list(mypycify(COMPILED, opt_level="3"))


setup(ext_modules=ext_modules())
