"""Shared fixtures.

The real WBC data lives beside the repository at ``../shared/datasets/segmentation_WBC``
(``BENCH_TEST_DATA`` overrides). Outside CI a test that needs it is skipped when it is
absent; in CI (``CI=true``) it fails instead, so a missing data set can never pass silently.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from architectures import registry

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


@pytest.fixture(autouse=True)
def count_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> Path:
    """``bench list``'s count cache in a new empty folder per test (``$BENCH_CACHE_DIR``, which
    subprocesses inherit): never the user's, and no test sees another's counts."""
    folder = tmp_path_factory.mktemp("count-cache")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def fresh_registry() -> Iterator[registry.Registry]:
    """A registry with the built-ins and no plugin, as ``architectures``' default for one test.

    What the test registers or loads (plugin files, entry points) goes into this copy and is
    forgotten with it: afterwards the default registry is the one from before, and the modules
    imported as plugins are gone from ``sys.modules`` (so that the next registry imports them
    again). The default registry's own plugin modules are hidden during the test, for the
    same reason, and put back after it.
    """
    saved = registry.default
    fresh = registry.Registry(
        spec for spec in saved.specs() if not spec.source.startswith("plugin:")
    )

    def plugin_module_names(owner: registry.Registry) -> list[str]:
        return [
            name
            for name in sys.modules
            if any(name == m or name.startswith(m + ".") for m in owner.plugin_modules)
        ]

    hidden = {name: sys.modules.pop(name) for name in plugin_module_names(saved)}
    registry.default = fresh
    importlib.invalidate_caches()
    try:
        yield fresh
    finally:
        registry.default = saved
        for name in plugin_module_names(fresh):
            del sys.modules[name]
        sys.modules.update(hidden)
        importlib.invalidate_caches()
