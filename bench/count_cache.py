"""``bench list``'s cache: parameter and GFLOP counts, and the registry's names, kept on disk.

Counting needs a built model, and building one needs torch, segmentation-models-pytorch and
timm imported (seconds on a small CPU machine) before the first model exists. The counts only
change when the code that builds or counts a model changes, so ``bench list`` keeps them:

* a **count** file per (architecture, source, width, options, image size) and the code's
  identity: the SHA-256 of every source file of the ``architectures`` package (the shared
  layers change every model), of the counting code, and of the file defining the
  architecture's factory (a plugin file, a plugin package's module), plus the installed
  versions of torch, segmentation-models-pytorch and timm. Any change gives another key,
  so a stale count is never read; it is simply never asked for again;
* a **registry** file per environment (those versions and the ``bench.architectures`` entry
  points installed, with their distributions' versions): the registered names with their
  source, description and width note, and the files they were read from with their SHA-256.
  A plain ``bench list`` whose registry and counts are all cached answers from these files
  without importing torch.

Where: ``$BENCH_CACHE_DIR`` if set, else ``architecture-counts/`` in the per-user cache
folder (``platformdirs.user_cache_dir("bench")``, e.g. ``~/.cache/bench`` on Linux). Every file
is written atomically (a temporary then a rename), so two ``bench list`` at once or a kill
leave whole files. A file that cannot be read or parsed, or whose content is not of the
expected shape, is a miss: the counts are measured again and the file rewritten. A cache that
cannot be written (read-only folder) only costs the next call the same time.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.atomic import atomic_write_text

CACHE_DIR_ENV = "BENCH_CACHE_DIR"
# Bumped when what a file holds, or how a count is made, changes meaning.
FORMAT = 1
# The packages whose code builds the models (smp's encoders, timm's ``tu-`` ones).
PACKAGES = ("torch", "segmentation-models-pytorch", "timm")
# architectures.registry.ENTRY_POINT_GROUP, without importing torch to read it.
ENTRY_POINT_GROUP = "bench.architectures"
# What a registry entry holds (ArchitectureSpec's fields bench list shows).
SPEC_FIELDS = ("name", "source", "description", "width_note")


def cache_dir() -> Path:
    """``$BENCH_CACHE_DIR``, else ``architecture-counts`` in the per-user cache folder."""
    env = os.environ.get(CACHE_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("bench")) / "architecture-counts"


def file_digest(path: str) -> str | None:
    """SHA-256 of a file's bytes, ``None`` if it cannot be read. Read at every call (a few
    small files): a file edited while a process runs (a notebook, a test) is seen."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def architectures_files() -> list[str]:
    """Every ``.py`` file of the ``architectures`` package, found without importing it."""
    spec = importlib.util.find_spec("architectures")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    return sorted(str(path) for folder in folders for path in Path(folder).rglob("*.py"))


def source_file(obj: object) -> str | None:
    """The file defining ``obj`` (a factory function or class), ``None`` if there is none."""
    try:
        path = inspect.getsourcefile(obj)  # type: ignore[arg-type]
    except (TypeError, OSError):
        return None
    return str(Path(path).resolve()) if path else None


@functools.cache
def environment() -> dict[str, Any]:
    """What the counts depend on besides our source files: the model packages' versions
    (looked up once per process: an install does not change the code already imported)."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"format": FORMAT, "python": list(sys.version_info[:2]), "packages": versions}


def installed_plugins() -> list[list[str]]:
    """The ``bench.architectures`` entry points installed now, with their distribution and
    its version: what a fresh registry loads besides the built-ins."""
    return sorted(
        [
            ep.name,
            ep.value,
            getattr(ep.dist, "name", None) or "",
            getattr(ep.dist, "version", None) or "",
        ]
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    )


def _key(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def _digests(files: Iterable[str]) -> dict[str, str] | None:
    """File -> SHA-256 of each file; ``None`` if one cannot be read (then nothing is cached)."""
    digests = {path: file_digest(path) for path in sorted(set(files))}
    if any(digest is None for digest in digests.values()):
        return None
    return digests  # type: ignore[return-value]


def _read(path: Path) -> dict[str, Any] | None:
    """A cache file's JSON object; ``None`` for a missing, unreadable or corrupt file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def _write(path: Path, data: dict[str, Any]) -> None:
    # A cache that cannot be written (read-only folder, full disk) only slows the next call.
    with contextlib.suppress(OSError):
        atomic_write_text(path, json.dumps({"format": FORMAT, **data}, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- counts


def count_key(
    spec: dict[str, Any],
    factory_file: str | None,
    width: float,
    options: dict[str, Any],
    size: tuple[int, int],
    counting_files: Iterable[str],
) -> str | None:
    """The key of one architecture's counts, or ``None`` when its code cannot be identified
    (a factory without a source file: nothing is cached for it).

    ``spec`` holds :data:`SPEC_FIELDS`; ``counting_files`` are the files of the code that
    builds and counts (``bench.cmd_list``); the ``architectures`` package's are added.
    """
    if factory_file is None:
        return None
    digests = _digests([*architectures_files(), *counting_files, factory_file])
    if digests is None:
        return None
    return _key(
        {
            "spec": {field: spec[field] for field in ("name", "source")},
            "factory_file": factory_file,
            "width": width,
            "options": options,
            "size": list(size),
            "files": digests,
            "environment": environment(),
        }
    )


def read_counts(key: str) -> tuple[int, float] | None:
    """Cached (trainable parameters, forward GFLOPs) under ``key``; ``None`` on any miss."""
    data = _read(cache_dir() / f"counts-{key}.json")
    if data is None or data.get("key") != key:
        return None
    params, gflops = data.get("params"), data.get("gflops")
    if type(params) is not int or type(gflops) is not float or params < 0 or gflops < 0:
        return None
    return params, gflops


def write_counts(key: str, params: int, gflops: float) -> None:
    _write(cache_dir() / f"counts-{key}.json", {"key": key, "params": params, "gflops": gflops})


# --------------------------------------------------------------------------- the registry


def _registry_path() -> Path:
    return cache_dir() / f"registry-{_key([environment(), installed_plugins()])}.json"


def write_registry(specs: list[dict[str, Any]], files: Iterable[str]) -> None:
    """Record the registry: ``specs`` (each :data:`SPEC_FIELDS` plus its ``factory_file``) and
    the source ``files`` it comes from (the package's, the plugins' factory files)."""
    digests = _digests([*architectures_files(), *files])
    if digests is not None:
        _write(_registry_path(), {"specs": specs, "files": digests})


def read_registry() -> list[dict[str, Any]] | None:
    """The recorded registry, if every file it came from is unchanged; ``None`` otherwise."""
    data = _read(_registry_path())
    if data is None:
        return None
    specs, files = data.get("specs"), data.get("files")
    if not isinstance(specs, list) or not isinstance(files, dict):
        return None
    if set(architectures_files()) - set(files):  # a new module in the package
        return None
    if any(file_digest(str(path)) != digest for path, digest in files.items()):
        return None
    fields = (*SPEC_FIELDS, "factory_file")
    if not all(isinstance(spec, dict) and set(fields) <= set(spec) for spec in specs):
        return None
    return specs
