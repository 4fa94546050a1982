"""No import cycle and no upward arrow between the modules of ``bench/`` and ``architectures/``.

Every module of the two packages is parsed with :mod:`ast` (nothing is imported) and each of
its imports of another module of the two packages becomes an arrow of the import graph:
module-level imports, imports inside functions and ``if TYPE_CHECKING:`` imports alike, since
each says that the importer builds on the imported module. ``from bench import stats``
is an arrow to ``bench.stats``; ``from bench.data import load_dataset`` one to ``bench.data``.
Not seen: imports by name at run time (``importlib.import_module``), and the implicit import
of a package's ``__init__`` that importing one of its submodules performs.

:data:`LAYERS` lists every module, bottom to top. A module may import modules of its own
layer and of the layers below; an import of a module of a higher layer fails
:func:`test_no_import_from_a_higher_layer`, naming the file, the line and both layers, and
any cycle fails :func:`test_no_import_cycle`. A module that is not in :data:`LAYERS` (a new
one) fails :func:`test_every_module_has_a_layer`: give it the layer of what it is, not the
one that makes its imports pass.

:data:`KNOWN_UPWARD` holds the upward arrows the code has today, each with why and what
would remove it: both checks skip them (a cycle through one is not reported), and
:func:`test_known_upward_arrows_still_exist` fails once one is gone, so the list only
shrinks.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "architectures")

#: Bottom to top: (what the layer is, its modules). Imports go down or sideways, never up.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundations (import nothing of ours)",
        ("bench", "bench.resources", "bench.errors", "bench.atomic", "bench.host_memory"),
    ),
    (
        "pure functions and settings",
        (
            "bench.metrics",
            "bench.flags",
            "bench.images",
            "bench.synthetic",
            "bench.environment",
            "bench.peak",
            "bench.config",
            "bench.recipes",
        ),
    ),
    ("architecture building blocks", ("architectures.layers", "architectures.measure")),
    ("architecture registry", ("architectures.registry",)),
    (
        "built-in architectures",
        (
            "architectures.unet_thesis",
            "architectures.segnet_basic",
            "architectures.deconvnet",
            "architectures.smp_baselines",
        ),
    ),
    ("architectures' public face", ("architectures",)),
    ("datasets", ("bench.data",)),
    ("protocols and dataset download", ("bench.protocols", "bench.fetch")),
    ("augmentation", ("bench.augment",)),
    ("training loop", ("bench.runner",)),
    ("run directory", ("bench.run_dir",)),
    ("statistics and aggregation", ("bench.stats", "bench.aggregate")),
    ("reports and comparisons", ("bench.report", "bench.compare", "bench.tracking")),
    ("combined runs", ("bench.combine",)),
    (
        "running models: executors, performance, prediction",
        ("bench.executors", "bench.perf", "bench.predict"),
    ),
    ("suite", ("bench.suite",)),
    ("cached model counts of bench list", ("bench.count_cache",)),
    ("Python API", ("bench.api",)),
    (
        "commands",
        (
            "bench.cmd_data",
            "bench.cmd_list",
            "bench.cmd_compare",
            "bench.cmd_perf",
            "bench.cmd_predict",
            "bench.cmd_run",
        ),
    ),
    ("command line", ("bench.cli",)),
]

#: Upward arrows the code has today: (importer, imported) -> why, and what removes it.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Arrow:
    importer: str
    imported: str
    path: Path
    line: int

    def where(self) -> str:
        path = (
            self.path.relative_to(REPO_ROOT) if self.path.is_relative_to(REPO_ROOT) else self.path
        )
        return f"{path}:{self.line}"


def module_files(root: Path = REPO_ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``packages`` under ``root``."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _ours(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that ``name`` (a module or an attribute of one) denotes, if any."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def arrows(modules: dict[str, Path]) -> Iterator[Arrow]:
    """Every import of one of ``modules`` by another, with the file and line that makes it."""
    for importer, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importer's package, up level - 1
                    package = importer if is_package else importer.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                # `from pkg import sub` imports the submodule pkg.sub; `from mod import f`, mod.
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            for target in targets:
                imported = _ours(target, modules)
                if imported is not None and imported != importer:
                    yield Arrow(importer, imported, path, node.lineno)


def layer_of() -> dict[str, int]:
    index: dict[str, int] = {}
    for level, (_, members) in enumerate(LAYERS):
        for module in members:
            assert module not in index, f"{module} is listed in two layers"
            index[module] = level
    return index


def upward(edges: list[Arrow], layers: dict[str, int]) -> list[Arrow]:
    """The arrows to a module of a higher layer than the importer's."""
    return [a for a in edges if layers[a.imported] > layers[a.importer]]


def _graph() -> tuple[dict[str, Path], list[Arrow]]:
    modules = module_files()
    return modules, list(arrows(modules))


def _describe(module: str, layers: dict[str, int]) -> str:
    level = layers[module]
    return f"{module} (layer {level}, {LAYERS[level][0]})"


def find_cycles(edges: list[Arrow]) -> list[list[Arrow]]:
    """One cycle through each strongly connected component of more than one module."""
    graph: dict[str, dict[str, Arrow]] = {}
    for arrow in edges:
        graph.setdefault(arrow.importer, {}).setdefault(arrow.imported, arrow)
    # Tarjan's strongly connected components, iteratively.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    cycles = []
    for component in components:
        members = set(component)
        # Walk from the first member inside the component until a module repeats.
        path = [component[0]]
        while True:
            step = min(m for m in graph[path[-1]] if m in members)
            if step in path:
                path = path[path.index(step) :] + [step]
                break
            path.append(step)
        cycles.append([graph[a][b] for a, b in itertools.pairwise(path)])
    return cycles


# --------------------------------------------------------------------------- the checks


def test_every_module_has_a_layer():
    modules, _ = _graph()
    layers = layer_of()
    missing = sorted(set(modules) - set(layers))
    stale = sorted(set(layers) - set(modules))
    assert not missing, (
        f"modules without a layer: {missing}; add each to LAYERS in {Path(__file__).name}"
    )
    assert not stale, f"LAYERS lists modules that do not exist (any more): {stale}"


def test_no_import_from_a_higher_layer():
    modules, edges = _graph()
    layers = layer_of()
    known = [a for a in edges if a.importer in layers and a.imported in layers]
    found = [
        f"{a.where()}: {_describe(a.importer, layers)} imports "
        f"{_describe(a.imported, layers)}, a higher layer"
        for a in upward(known, layers)
        if (a.importer, a.imported) not in KNOWN_UPWARD
    ]
    assert not found, "upward imports:\n" + "\n".join(found)


def test_no_import_cycle():
    _, edges = _graph()
    cycles = find_cycles([a for a in edges if (a.importer, a.imported) not in KNOWN_UPWARD])
    text = [
        " -> ".join([cycle[0].importer, *(a.imported for a in cycle)])
        + " ("
        + ", ".join(f"{a.where()} imports {a.imported}" for a in cycle)
        + ")"
        for cycle in cycles
    ]
    assert not cycles, "import cycles:\n" + "\n".join(text)


def test_known_upward_arrows_still_exist():
    _, edges = _graph()
    present = {(a.importer, a.imported) for a in edges}
    gone = sorted(set(KNOWN_UPWARD) - present)
    assert not gone, f"no longer imported, delete from KNOWN_UPWARD: {gone}"
    layers = layer_of()
    not_upward = [
        pair for pair in KNOWN_UPWARD if pair[0] in layers and layers[pair[1]] <= layers[pair[0]]
    ]
    assert not not_upward, f"not upward by LAYERS, delete from KNOWN_UPWARD: {not_upward}"


# --------------------------------------------------------------------------- the checker


@pytest.fixture
def toy(tmp_path: Path) -> dict[str, Path]:
    """A package whose imports hide in every place the checker must look."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from pkg import low\n",
        "low.py": "import os\n",
        "mid.py": (
            "from typing import TYPE_CHECKING\n"
            "from . import low\n"
            "if TYPE_CHECKING:\n    from pkg.sub.deep import Thing\n"
        ),
        "high.py": "def late():\n    import pkg.mid\n    from .sub import deep\n",
        "sub/__init__.py": "",
        "sub/deep.py": "from ..high import late\nfrom pkg.low import nothing_ours as _\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    return module_files(tmp_path, ("pkg",))


def test_the_checker_sees_relative_function_level_and_type_checking_imports(toy):
    found = {(a.importer, a.imported, a.line) for a in arrows(toy)}
    assert found == {
        ("pkg", "pkg.low", 1),
        ("pkg.mid", "pkg.low", 2),
        ("pkg.mid", "pkg.sub.deep", 4),
        ("pkg.high", "pkg.mid", 2),
        ("pkg.high", "pkg.sub.deep", 3),
        ("pkg.sub.deep", "pkg.high", 1),
        ("pkg.sub.deep", "pkg.low", 2),
    }


def test_the_checker_finds_upward_arrows(toy):
    layers = {"pkg.low": 0, "pkg": 1, "pkg.mid": 1, "pkg.sub": 1, "pkg.sub.deep": 2, "pkg.high": 3}
    found = {(a.importer, a.imported) for a in upward(list(arrows(toy)), layers)}
    assert found == {("pkg.mid", "pkg.sub.deep"), ("pkg.sub.deep", "pkg.high")}


def test_the_checker_names_each_cycle(toy):
    cycles = find_cycles(list(arrows(toy)))
    assert len(cycles) == 1
    assert {a.importer for a in cycles[0]} == {"pkg.high", "pkg.mid", "pkg.sub.deep"}
    assert cycles[0][0].importer == cycles[0][-1].imported  # it closes
