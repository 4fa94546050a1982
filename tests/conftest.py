"""Shared fixtures.

The real WBC data lives beside the repository at ``../shared/datasets/segmentation_WBC``
(``BENCH_TEST_DATA`` overrides). Outside CI a test that needs it is skipped when it is
absent; in CI (``CI=true``) it fails instead, so a missing data set can never pass silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WBC_DIR = REPO_ROOT.parent / "shared" / "datasets" / "segmentation_WBC"


@pytest.fixture(scope="session")
def wbc_dir() -> Path:
    """The folder holding ``Dataset 1/`` of the real WBC data."""
    path = Path(os.environ.get("BENCH_TEST_DATA", DEFAULT_WBC_DIR))
    if not (path / "Dataset 1").is_dir():
        message = f"real WBC data not found at {path} (set BENCH_TEST_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
