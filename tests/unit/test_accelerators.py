"""The C accelerators are built: under CI=true a missing one fails instead of its tests skipping silently.

Each accelerator has a pure-Python reference and its own bit-exactness tests, which skip when the
extension is absent (a machine without a compiler). CI has a compiler, so absence there is a broken build.
"""
from __future__ import annotations

import importlib
import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ACCELERATORS = ["sipcore._scan", "media._g711", "media._relay"]


@pytest.mark.parametrize("name", ACCELERATORS)
def test_accelerator_is_built(name: str) -> None:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"{name} is not built ({exc}): under CI=true every C accelerator must build")
        pytest.skip(f"{name} is not built ({exc}); the pure-Python path is used")
