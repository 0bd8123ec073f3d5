"""The smoke suite runs only against an installed product (tests/smoke/product.py):
``pytest tests/smoke --shardmesh VENV/bin/shardmesh`` or ``--image NAME``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.smoke.product import Product, from_options


@pytest.fixture(scope="session")
def product(pytestconfig: pytest.Config) -> Iterator[Product]:
    found = from_options(pytestconfig.getoption("shardmesh"), pytestconfig.getoption("image"))
    if found is None:
        pytest.skip("give --shardmesh PATH or --image NAME (make smoke)")
    yield found
    found.cleanup()


@pytest.fixture(scope="session")
def data_plane(pytestconfig: pytest.Config) -> str:
    """The data plane the install must report: compiled unless told otherwise."""
    return str(pytestconfig.getoption("data_plane"))
