"""Fixtures of the real-browser tests (helpers in browser_helpers.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from browser_helpers import Chromium, chromium_binary


@pytest.fixture
def chromium(tmp_path: Path):
    """A headless Chromium to start on a URL (skipped without chromium, failed under CI=true); killed at teardown."""
    browser = Chromium(chromium_binary(), tmp_path / "profile", tmp_path / "chromium.log")
    yield browser
    browser.stop()
