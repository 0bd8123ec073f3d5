"""Build hook: the sidecar's data plane is compiled with mypyc.

The listed modules are ordinary, mypy --strict Python. mypyc turns them into C
extensions, which roughly halves the proxy's CPU per request (bench/sidecar.py).
Without a working C compiler (or without Python's headers), or with
SHARDMESH_PURE_PYTHON=1, the same modules are installed as plain Python, only
slower; SHARDMESH_REQUIRE_COMPILED=1 turns that fallback into an error (the
Dockerfile and ``make test`` set it). Which one was built is printed here, shows
in the wheel's name (``cp311-...-linux_x86_64`` compiled, ``py3-none-any`` plain),
and at run time in ``shardmesh --version`` and the sidecar's start-up line.

mypyc type-checks the modules first, so everything they import must be present
in the build environment: pyproject.toml's ``build-system.requires`` lists it.
``make compile`` (part of ``make test``) builds them in place for development.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

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
    "sidecar/slot_state.py",
    "sidecar/routing.py",
    "sidecar/h1base.py",
    "sidecar/h1relay.py",
    "sidecar/slot_exchange.py",
    "sidecar/exchange.py",
    "sidecar/h1requests.py",
    "sidecar/proxy.py",
    "sidecar/h1timeouts.py",
    "sidecar/h2errors.py",
    "sidecar/h2headers.py",
    "sidecar/h2slots.py",
    "sidecar/h2stream.py",
    "sidecar/h2flow.py",
    "sidecar/h2answers.py",
    "sidecar/h2replay.py",
    "sidecar/h2bridge.py",
    "sidecar/h2upstream.py",
    "sidecar/h2front.py",
]
#: Not on the request path, so plain Python: discovery, the directory stream, and
#: ``listwatch``/``pods`` (mypyc accepts them, but the directory's informer and
#: the sidecar's ``RouteWatch`` extend ``listwatch.StatefulSetWatch``, and an
#: interpreted class may not inherit from a compiled one).
#: HTTP/2's ``h2wire``, ``h2memo`` and ``h2fast`` stay plain too: they subclass
#: the h2 library's (interpreted) classes, which a compiled class may not.


def say(message: str) -> None:
    print(f"shardmesh build: {message}", file=sys.stderr, flush=True)


def c_compiler_problem() -> str | None:
    """Why a C extension cannot be built here (no compiler, no Python.h), or None."""
    from distutils.ccompiler import new_compiler
    from distutils.sysconfig import customize_compiler, get_python_inc

    compiler = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.c"
        probe.write_text("#include <Python.h>\nint main(void) { return 0; }\n")
        try:
            compiler.compile([str(probe)], output_dir=tmp, include_dirs=[get_python_inc()])
        except Exception as exc:  # CompileError, whose class varies with setuptools' version
            return f"{type(exc).__name__}: {exc}".strip()
    return None


#: The commands that build extensions; the others (egg_info, dist_info, sdist: the
#: metadata steps of an isolated build) skip mypyc's type check and code generation.
BUILDS = {"build", "build_ext", "bdist_wheel", "bdist", "install", "develop", "editable_wheel"}


def ext_modules() -> list[object]:
    if not BUILDS.intersection(sys.argv[1:]):
        return []
    if os.environ.get("SHARDMESH_PURE_PYTHON") == "1":
        say("sidecar data plane: plain Python (SHARDMESH_PURE_PYTHON=1)")
        return []
    problem = c_compiler_problem()
    if problem is not None:
        if os.environ.get("SHARDMESH_REQUIRE_COMPILED") == "1":
            raise SystemExit(f"shardmesh build: SHARDMESH_REQUIRE_COMPILED=1 but no C extension "
                             f"can be built here: {problem}")
        say(f"sidecar data plane: plain Python (no usable C compiler: {problem})")
        return []
    from mypyc.build import mypycify

    say("sidecar data plane: compiled with mypyc")
    return list(mypycify(COMPILED, opt_level="3"))


setup(ext_modules=ext_modules())
