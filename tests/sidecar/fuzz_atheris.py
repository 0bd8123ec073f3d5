"""Coverage-guided fuzzing (atheris, libFuzzer) of the parsers a client or a pod author
feeds: the key extractors and the annotation parsers. Not a pytest module:
``make fuzz`` runs it when atheris is installed (``pip install atheris``).

    python -m tests.sidecar.fuzz_atheris -runs=200000

Each input must give a value or the documented error (ProxyError with a key
code; AnnotationError naming the annotation and its value; ValueError naming
the line for the downward file); anything else is a crash libFuzzer reports.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from sidecar import annotations as ann
    from sidecar import downward, http11, keys, pod_checks
    from sidecar.errors import ProxyError

_SOURCES = [ann.parse_key_source(ann.KEY, v) for v in (
    "header:X-Shard-Key", "query:key", "path:1", "json:id", "json:a.0.b")]
_KEY_CODES = {"missing_shard_key", "invalid_shard_key", "ambiguous_shard_key"}
_PARSERS = (ann.parse_bool, ann.parse_key_source, ann.parse_strategy, ann.parse_unavailable,
            ann.parse_duration, pod_checks.parse_quantity)
_NAMES = sorted(ann.KNOWN) + [f"{o}.db" for o in ann.ROUTE_OPTIONS] + ["x.io/timeout.y"]


def _key(extract: object) -> None:
    try:
        key = extract()  # type: ignore[operator]
    except ProxyError as err:
        assert err.code in _KEY_CODES, err.code
        return
    key.encode("utf-8")


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    choice = fdp.ConsumeIntInRange(0, 4)
    if choice == 0:
        source = _SOURCES[fdp.ConsumeIntInRange(0, len(_SOURCES) - 1)]
        body = fdp.ConsumeBytes(fdp.remaining_bytes())
        _key(lambda: keys.from_json(body, source))
        _key(lambda: keys.from_query(body, source))
        _key(lambda: keys.from_path(b"/" + body, source))
        _key(lambda: keys.from_header(body, source))
    elif choice == 1:
        parser = _PARSERS[fdp.ConsumeIntInRange(0, len(_PARSERS) - 1)]
        value = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
        try:
            parser("shard.io/x", value)
        except ann.AnnotationError as err:
            assert err.value == value
    elif choice == 2:
        count = fdp.ConsumeIntInRange(0, 5)
        annotations = {_NAMES[fdp.ConsumeIntInRange(0, len(_NAMES) - 1)]:
                       fdp.ConsumeUnicodeNoSurrogates(24) for _ in range(count)}
        try:
            pod_checks.validate_pod(annotations, "ns")
        except ann.AnnotationError as err:
            assert err.key in annotations or err.key.startswith(ann.PREFIX)
    elif choice == 3:
        try:
            downward.parse_downward_file(fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes()))
        except ValueError as err:
            assert "line " in str(err)
    else:
        value = fdp.ConsumeBytes(fdp.remaining_bytes())
        error = http11.check_transfer_encoding(value, False)
        assert error is None or error.status in (400, 501)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
