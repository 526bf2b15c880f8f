"""Fixtures for the lab tests: one 3-host lab per module, always torn down."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lab import Lab


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A fresh lab of pg1..pg3, up and `running`; removed at the end of the module."""
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (mounts, bridge, systemd-nspawn)")
    try:
        yield Lab.up(3)
    finally:
        Lab.down()
