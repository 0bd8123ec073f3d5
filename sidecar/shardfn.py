"""Key -> ordinal: the one function every shardmesh client must reproduce.

Invariants (tests/unit/test_shardfn_properties.py and tests/vectors/shard_vectors.json hold them):

1. Pure: the ordinal depends only on (key, strategy, N). No sockets, no clock,
   no process state, never Python's ``hash()``.
2. Range: for N >= 1 every strategy returns an int in 0..N-1. N < 1 is a
   ``ValueError`` (the caller turns it into a clear error; nothing owns a key).
3. Integer keys: a key matching ``-?[0-9]+`` (ASCII) is a decimal integer of
   any size (also past CPython's 4300-digit int() limit: the digits are read as
   text). It is canonicalised to ``str(int(key))`` ("007" is 7, "-0" is 0).
   - modulo: ``k mod N`` with floor semantics (the result is never negative).
   - jump: the 64-bit key value is ``k mod 2**64``.
   - rendezvous: hashes the canonical text, so "007" and "7" agree.
4. Other keys: the 64-bit key value is ``h64(utf8(key))``.
5. ``h64`` is xxHash64 with seed 0 (XXH64, https://xxhash.com).
6. jump: Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm"
   (2014), with the published 64-bit LCG and IEEE-754 double arithmetic.
7. rendezvous: weight(i) = XXH64(utf8(canonical key), seed=i) for i in 0..N-1;
   the highest weight wins, and a tie goes to the lowest ordinal.
8. The result i in 0..N-1 is a shard, not yet a pod: with the StatefulSet's
   ``spec.ordinals.start`` = s it is served by the pod with ordinal s + i
   (``pod_ordinal``). Every strategy works on 0..N-1 whatever s is.
"""

from __future__ import annotations

from typing import Final, Literal

import xxhash

Strategy = Literal["modulo", "jump", "rendezvous"]
STRATEGIES: Final[tuple[Strategy, ...]] = ("modulo", "jump", "rendezvous")

_MASK64: Final = (1 << 64) - 1
_TWO_64: Final = 1 << 64
_JUMP_MULTIPLIER: Final = 2862933555777941757
#: Digits of an integer key summed in a machine word at a time (see _mod).
_NATIVE_DIGITS: Final = 18
_POWERS_OF_TEN: Final = tuple(10**k for k in range(_NATIVE_DIGITS + 1))


def h64(data: bytes, seed: int = 0) -> int:
    """XXH64 of ``data``: the portable 64-bit hash behind every strategy."""
    return xxhash.xxh64_intdigest(data, seed)


def _digits_start(key: str) -> int:
    """Where the digits of an integer key start (0, or 1 after a "-"); -1 for other keys.

    The functions below read the digits as text: int(key) is refused by CPython
    past 4300 digits, and keys of any size must route.
    """
    n = len(key)
    start = 1 if n > 1 and key[0] == "-" else 0
    if start == n:
        return -1
    if n - start > _NATIVE_DIGITS:  # long: C-speed checks (isdigit() alone takes "١")
        return start if key.isascii() and key[start:].isdigit() else -1
    for i in range(start, n):  # compiled: a native loop (this runs for every request)
        c = ord(key[i])
        if c < 0x30 or c > 0x39:
            return -1
    return start


def _mod(key: str, start: int, modulus: int) -> int:
    """``k mod modulus`` (floor semantics: never negative) for the integer key whose
    digits start at ``start``."""
    n = len(key)
    if n - start <= _NATIVE_DIGITS:  # the usual key: its value fits a machine word
        r = 0
        for i in range(start, n):
            r = r * 10 + (ord(key[i]) - 0x30)
        r %= modulus
    else:  # 18 digits at a time: one big-number step per chunk, linear in the length
        r = 0
        for i in range(start, n, _NATIVE_DIGITS):
            chunk = key[i:i + _NATIVE_DIGITS]
            r = (r * _POWERS_OF_TEN[len(chunk)] + int(chunk)) % modulus
    return (modulus - r) % modulus if start else r


def canonical(key: str) -> str:
    """The text the hashes see: integers lose leading zeros and the sign of zero."""
    start = _digits_start(key)
    if start < 0:
        return key
    digits = key[start:].lstrip("0") or "0"
    return "-" + digits if start and digits != "0" else digits


def key64(key: str) -> int:
    """The 64-bit key value used by ``jump``."""
    start = _digits_start(key)
    if start >= 0:
        return _mod(key, start, _TWO_64)
    return h64(key.encode("utf-8"))


def modulo(key: str, count: int) -> int:
    start = _digits_start(key)
    if start >= 0:
        return _mod(key, start, count)
    return h64(key.encode("utf-8")) % count


def jump_hash(value: int, count: int) -> int:
    """Lamping-Veach jump consistent hash of a 64-bit value over ``count`` buckets."""
    b, j = -1, 0
    while j < count:
        b = j
        value = (value * _JUMP_MULTIPLIER + 1) & _MASK64
        j = int((b + 1) * (float(1 << 31) / float((value >> 33) + 1)))
    return b


def jump(key: str, count: int) -> int:
    return jump_hash(key64(key), count)


def rendezvous(key: str, count: int) -> int:
    data = canonical(key).encode("utf-8")
    best, best_weight = 0, -1
    for ordinal in range(count):
        weight = h64(data, ordinal)
        if weight > best_weight:
            best, best_weight = ordinal, weight
    return best


def ordinal_for(key: str, strategy: str, count: int) -> int:
    """The ordinal in 0..count-1 that owns ``key``.

    Raises ValueError when ``count`` < 1 or the strategy is unknown, because no
    ordinal can own a key then and guessing would misroute.
    """
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    # Direct calls, not a table of functions: compiled, each is a native call (the
    # proxy calls this for every request).
    if strategy == "modulo":
        return modulo(key, count)
    if strategy == "jump":
        return jump(key, count)
    if strategy == "rendezvous":
        return rendezvous(key, count)
    raise ValueError(f"unknown strategy '{strategy}': expected one of {', '.join(STRATEGIES)}")


def pod_ordinal(key: str, strategy: str, count: int, start: int = 0) -> int:
    """The ordinal of the pod that owns ``key``: ``start + ordinal_for(key, strategy, count)``.

    ``start`` is the StatefulSet's ``spec.ordinals.start`` (0 when absent): its pods
    are ``start .. start+count-1``. Not used per request; the sidecar's map holds each
    shard's pod ordinal already (sidecar/shardmap.py).
    """
    if start < 0:
        raise ValueError(f"ordinals start must be >= 0, got {start}")
    return start + ordinal_for(key, strategy, count)
