"""Properties of key -> ordinal (sidecar.shardfn) that every client relies on."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.shardfn import STRATEGIES, canonical, h64, jump_hash, key64, ordinal_for

counts = st.integers(min_value=1, max_value=1000)
any_key = st.one_of(st.integers().map(str), st.text(min_size=1, max_size=40))


@given(k=st.integers(min_value=-(2**200), max_value=2**200), n=counts)
def test_modulo_integer_key_is_floor_mod(k: int, n: int) -> None:
    assert ordinal_for(str(k), "modulo", n) == k % n


@given(k=st.integers(min_value=0, max_value=2**80), zeros=st.integers(0, 5), n=counts)
def test_leading_zeros_do_not_change_the_owner(k: int, zeros: int, n: int) -> None:
    for strategy in STRATEGIES:
        assert ordinal_for("0" * zeros + str(k), strategy, n) == ordinal_for(str(k), strategy, n)


@given(key=any_key, n=counts, strategy=st.sampled_from(STRATEGIES))
def test_every_strategy_stays_in_range(key: str, n: int, strategy: str) -> None:
    assert 0 <= ordinal_for(key, strategy, n) < n  # type: ignore[arg-type]


@given(key=st.text(min_size=1).filter(lambda s: canonical(s) == s and not s.lstrip("-").isdigit()))
def test_text_keys_use_xxh64_of_utf8(key: str) -> None:
    assert key64(key) == h64(key.encode("utf-8"))


@given(k=st.integers(min_value=-(2**100), max_value=2**100))
def test_jump_integer_key_value_is_mod_2_64(k: int) -> None:
    assert key64(str(k)) == k % 2**64


@pytest.mark.parametrize("n", [pytest.param(n, id=f"N={n}->{n + 1}") for n in (1, 2, 3, 5, 10, 50)])
def test_jump_growth_moves_few_keys_and_only_to_the_new_bucket(n: int) -> None:
    keys = [f"key-{i}" for i in range(20_000)] + [str(i) for i in range(20_000)]
    before = [ordinal_for(k, "jump", n) for k in keys]
    after = [ordinal_for(k, "jump", n + 1) for k in keys]
    moved = [(b, a) for b, a in zip(before, after, strict=True) if a != b]
    assert all(a == n for _, a in moved), "a key moved between two old buckets"
    expected = len(keys) / (n + 1)
    # Binomial standard deviation is about sqrt(expected); allow 5 of them.
    assert abs(len(moved) - expected) < 5 * expected**0.5 + 1


@given(value=st.integers(min_value=0, max_value=2**64 - 1), n=st.integers(1, 200))
@settings(max_examples=300)
def test_jump_moves_only_to_the_new_bucket(value: int, n: int) -> None:
    before, after = jump_hash(value, n), jump_hash(value, n + 1)
    assert after in (before, n)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategies_balance_keys(strategy: str) -> None:
    n, keys = 7, 14_000
    counts_ = [0] * n
    for i in range(keys):
        counts_[ordinal_for(f"account-{i}", strategy, n)] += 1  # type: ignore[arg-type]
    assert max(counts_) < 1.15 * keys / n and min(counts_) > 0.85 * keys / n


# Values the Lamping-Veach reference C++ gives (as published with dgryski/go-jump's
# tests and ClickHouse's jumpConsistentHash tests): key -> buckets for N = 1, 2, ...
JUMP_REFERENCE = {
    0: [0] * 19,
    1: [0, 0, 0, 0, 0, 0, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 17, 17],
    0xDEADBEEF: [0, 1, 2, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 16, 16, 16],
    0x0DDC0FFEEBADF00D: [0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 15, 15, 15, 15],
}


@pytest.mark.parametrize("key", [pytest.param(k, id=hex(k)) for k in JUMP_REFERENCE])
def test_jump_matches_reference_implementation(key: int) -> None:
    got = [jump_hash(key, n) for n in range(1, len(JUMP_REFERENCE[key]) + 1)]
    assert got == JUMP_REFERENCE[key]


@pytest.mark.parametrize(
    ("key", "n", "bucket"),
    [
        pytest.param(42, 57, 43, id="42-of-57"),
        pytest.param(256, 1024, 520, id="256-of-1024"),
        pytest.param(3735883980, 666, 361, id="3735883980-of-666"),
        pytest.param(16045690984833335023, 255, 237, id="u64-of-255"),
    ],
)
def test_jump_matches_clickhouse_values(key: int, n: int, bucket: int) -> None:
    assert jump_hash(key, n) == bucket
    # Through the string API too: a decimal key is its own 64-bit value.
    assert ordinal_for(str(key), "jump", n) == bucket


@pytest.mark.parametrize(
    ("count", "message"),
    [pytest.param(0, "must be >= 1", id="zero"), pytest.param(-3, "must be >= 1", id="negative")],
)
def test_no_ordinal_owns_a_key_without_replicas(count: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ordinal_for("7", "modulo", count)


def test_unknown_strategy_is_named() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'ring'"):
        ordinal_for("7", "ring", 3)  # type: ignore[arg-type]


@pytest.mark.parametrize("sign", ["", "-"])
def test_integer_keys_past_cpythons_int_limit(sign: str) -> None:
    """CPython's int() refuses more than 4300 digits; such keys still route exactly."""
    digits = "0" * 3 + "7" * 9000 + "3"
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        k = int(sign + digits)
    finally:
        sys.set_int_max_str_digits(limit)
    key = sign + digits
    for n in (1, 3, 7, 1000, 2**40):
        assert ordinal_for(key, "modulo", n) == k % n
    assert key64(key) == k % 2**64
    assert canonical(key) == sign + digits.lstrip("0")
    assert 0 <= ordinal_for(key, "rendezvous", 5) < 5
