"""The browser the UI tests drive: Debian's Chromium, installed by ``.ci/install-browser``, never by
a test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"


def installed_chromium() -> str:
    """Chromium's path. Where CI promised it (``CI=true``: ``.ci/run`` installs it first) its absence
    fails the test; elsewhere the test is skipped, saying how to install it."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    how = "run .ci/install-browser (apt-get install chromium, as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true promises a browser, but {CHROMIUM} is missing: {how} before the tests.")
    pytest.skip(f"Chromium is not installed at {CHROMIUM}: {how} to run this test.")
