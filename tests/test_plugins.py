"""The three ways to add an architecture, and how broken plugins are reported."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import architectures
from architectures import registry
from architectures.registry import Registry
from bench.errors import ArchitectureError

PLUGINS = Path(__file__).parent / "plugins"
REPO = Path(__file__).resolve().parents[1]


# Every test starts with the built-ins and no plugin, and what it registers is forgotten.
pytestmark = pytest.mark.usefixtures("fresh_registry")


def _forward_shape(name: str) -> tuple[int, ...]:
    model = architectures.build(name, width=0.5).eval()
    with torch.no_grad():
        return tuple(model(torch.rand(2, 3, 64, 64)).shape)


# ------------------------------------------------------------- 1. a module in architectures/


def test_builtin_modules_use_the_decorator() -> None:
    spec = architectures.get_spec("segnet_basic")
    assert spec.source == "builtin"
    assert spec.factory.__module__ == "architectures.segnet_basic"


def test_decorator_registers_a_class_with_its_docstring() -> None:
    @architectures.register_architecture("test_decorated_class")
    class Net(nn.Conv2d):
        """A 1x1 conv.

        More text that is not the description.
        """

        def __init__(self, num_classes: int = 3, in_channels: int = 3, width: float = 1.0):
            super().__init__(in_channels, num_classes, 1)

    spec = architectures.get_spec("test_decorated_class")
    assert (spec.source, spec.description) == ("builtin", "A 1x1 conv.")
    assert _forward_shape("test_decorated_class") == (2, 3, 64, 64)


# ------------------------------------------------------------- the registry object


def test_fresh_registry_fixture_is_the_default_with_the_builtins_only(
    fresh_registry: Registry,
) -> None:
    assert registry.default is fresh_registry
    assert {"unet_thesis", "segnet_basic", "deconvnet", "smp_unet"} <= set(
        architectures.available()
    )
    assert not [s for s in fresh_registry.specs() if s.source.startswith("plugin:")]


def test_a_registry_loads_plugin_files_into_itself(fresh_registry: Registry) -> None:
    other = Registry(fresh_registry.specs())
    try:
        assert other.load_plugin_file(PLUGINS / "good_plugin.py") == ["test_good_plugin_net"]
        assert other.get_spec("test_good_plugin_net").source == "plugin:good_plugin.py"
        assert other.get_spec("unet_thesis") is fresh_registry.get_spec("unet_thesis")
        assert "test_good_plugin_net" not in architectures.available()  # not the default's
        model = other.build("test_good_plugin_net", width=0.5)
        other.check_output_shape("test_good_plugin_net", model, size=(64, 64))
    finally:
        for name in other.plugin_modules:
            sys.modules.pop(name, None)


def test_a_registry_refuses_duplicate_specs() -> None:
    spec = architectures.get_spec("unet_thesis")
    with pytest.raises(ArchitectureError, match="'unet_thesis' is registered twice"):
        Registry([spec, spec])
    with pytest.raises(ArchitectureError, match="invalid architecture name"):
        Registry().register("not a name")


# ------------------------------------------------------------- 2. an installed distribution


def test_entry_point_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "src"
    shutil.copytree(REPO / "examples" / "bench-example-plugin", source)  # builds write here
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
    )
    monkeypatch.syspath_prepend(str(target))

    assert "example_tiny_fcn" in architectures.available()
    assert architectures.get_spec("example_tiny_fcn").source == "plugin:bench-example-plugin"
    assert _forward_shape("example_tiny_fcn") == (2, 3, 64, 64)
    assert architectures.plugin_errors() == {}


def _fake_distribution(site: Path, name: str, entry_points: dict[str, str]) -> None:
    """A minimal installed distribution (dist-info with METADATA and entry_points.txt)."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "\n".join(f"{key} = {value}" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[bench.architectures]\n{lines}\n")


def test_broken_entry_points_are_skipped_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    _fake_distribution(site, "broken-import-dist", {"broken_import": "bench_missing_module_xyz"})
    _fake_distribution(site, "wrong-shape-dist", {"wrong_shape": "bench_wrong_shape_ep"})
    _fake_distribution(site, "good-dist", {"good_ep": "bench_good_ep"})
    (site / "bench_wrong_shape_ep.py").write_text(
        (PLUGINS / "wrong_shape_plugin.py").read_text().replace("test_wrong", "ep_wrong")
    )
    (site / "bench_good_ep.py").write_text(
        (PLUGINS / "good_plugin.py").read_text().replace("test_good", "ep_good")
    )
    monkeypatch.syspath_prepend(str(site))

    with pytest.warns(UserWarning) as record:
        names = architectures.available()
    messages = [str(w.message) for w in record]
    assert any("broken-import-dist" in m for m in messages)
    assert any("wrong-shape-dist" in m for m in messages)
    errors = architectures.plugin_errors()
    assert set(errors) == {"broken_import", "wrong_shape"}
    assert "bench_missing_module_xyz" in errors["broken_import"]
    assert "ep_wrong_shape_net" in errors["wrong_shape"]
    assert "(1, 3, 60, 60)" in errors["wrong_shape"]
    # the others still load: built-ins, smp, and the good plugin
    assert {"unet_thesis", "smp_unet", "ep_good_plugin_net"} <= set(names)
    assert "ep_wrong_shape_net" not in names
    assert architectures.get_spec("ep_good_plugin_net").source == "plugin:good-dist"
    with pytest.raises(ArchitectureError, match="broken-import-dist"):
        architectures.get_spec("broken_import")


def test_entry_point_module_imported_before_the_registry_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    _fake_distribution(site, "early-dist", {"early": "bench_early_ep"})
    (site / "bench_early_ep.py").write_text(
        (PLUGINS / "good_plugin.py").read_text().replace("test_good", "early")
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.import_module("bench_early_ep")  # e.g. a notebook importing the plugin first
    assert architectures.get_spec("early_plugin_net").source == "plugin:early-dist"
    assert architectures.plugin_errors() == {}


# ------------------------------------------------------------- 3. a file


def test_plugin_file() -> None:
    names = architectures.load_plugin_file(PLUGINS / "good_plugin.py")
    assert names == ["test_good_plugin_net"]
    spec = architectures.get_spec("test_good_plugin_net")
    assert spec.source == "plugin:good_plugin.py"
    assert spec.description == "Test plugin: two 3x3 convolutions."
    assert _forward_shape("test_good_plugin_net") == (2, 3, 64, 64)
    # loading the same file again (e.g. by the CLI and the runner) is harmless
    assert architectures.load_plugin_file(str(PLUGINS / "good_plugin.py")) == names


def test_plugin_file_import_error_names_the_file() -> None:
    with pytest.raises(ArchitectureError, match="broken_import_plugin.py.*a_module_that_does_not"):
        architectures.load_plugin_file(PLUGINS / "broken_import_plugin.py")
    assert "test_never_registered" not in architectures.available()
    assert "unet_thesis" in architectures.available()


def test_plugin_file_wrong_shape_names_file_and_architecture() -> None:
    with pytest.raises(
        ArchitectureError, match=r"wrong_shape_plugin.py.*test_wrong_shape_net.*\(1, 3, 60, 60\)"
    ):
        architectures.load_plugin_file(PLUGINS / "wrong_shape_plugin.py")
    assert "test_wrong_shape_net" not in architectures.available()  # rolled back
    assert "deconvnet" in architectures.available()


def test_plugin_file_missing() -> None:
    with pytest.raises(ArchitectureError, match="no_such_plugin.py"):
        architectures.load_plugin_file(PLUGINS / "no_such_plugin.py")


@pytest.mark.parametrize(
    ("names", "match"),
    [
        (["unet_thesis"], r"'unet_thesis' is registered twice.*builtin.*plugin:clash.py"),
        (["test_twice", "test_twice"], r"'test_twice' is registered twice.*plugin:clash.py"),
    ],
)
def test_plugin_file_clashes_name_the_plugin(tmp_path: Path, names: list[str], match: str) -> None:
    body = "from torch import nn\nfrom architectures import register_architecture\n"
    for index, name in enumerate(names):
        body += textwrap.dedent(
            f"""
            @register_architecture({name!r})
            def factory{index}(num_classes=3, in_channels=3, width=1.0):
                return nn.Conv2d(in_channels, num_classes, 1)
            """
        )
    path = tmp_path / "clash.py"
    path.write_text(body)
    with pytest.raises(ArchitectureError, match=match):
        architectures.load_plugin_file(path)
    assert architectures.get_spec("unet_thesis").source == "builtin"
    assert "test_twice" not in architectures.available()


_REGISTERS_THEN = """
from torch import nn
from architectures import register_architecture


@register_architecture("test_registered_before_exit")
def factory(num_classes=3, in_channels=3, width=1.0):
    return nn.Conv2d(in_channels, num_classes, 1)


{tail}
"""


@pytest.mark.parametrize(
    ("tail", "match"),
    [
        ("import sys\nsys.exit(0)", r"exit_plugin\.py' called sys\.exit\(0\) during its import"),
        ("raise SystemExit('bye')", r"exit_plugin\.py' called sys\.exit\('bye'\)"),
        # What Ctrl-C raises in a plugin that hangs at import.
        ("raise KeyboardInterrupt", r"exit_plugin\.py': interrupted \(Ctrl-C\) during its import"),
        ("raise GeneratorExit", r"exit_plugin\.py' could not be imported: GeneratorExit"),
    ],
)
def test_plugin_file_exiting_or_interrupted_at_import_names_the_file(
    tmp_path: Path, tail: str, match: str
) -> None:
    path = tmp_path / "exit_plugin.py"
    path.write_text(_REGISTERS_THEN.format(tail=tail))
    with pytest.raises(ArchitectureError, match=match):
        architectures.load_plugin_file(path)
    assert "test_registered_before_exit" not in architectures.available()  # rolled back
    assert not [m for m in sys.modules if m.startswith("_bench_plugin_exit_plugin")]


def test_plugin_file_exiting_in_its_forward_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "exit_forward.py"
    path.write_text(
        textwrap.dedent(
            """
            import sys
            from torch import nn
            from architectures import register_architecture

            class Quits(nn.Module):
                def forward(self, x):
                    sys.exit(3)

            @register_architecture("test_quits_in_forward")
            def factory(num_classes=3, in_channels=3, width=1.0):
                return Quits()
            """
        )
    )
    with pytest.raises(ArchitectureError, match=r"exit_forward\.py' called sys\.exit\(3\).*shape"):
        architectures.load_plugin_file(path)
    assert "test_quits_in_forward" not in architectures.available()


def test_entry_point_calling_sys_exit_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    _fake_distribution(site, "exiting-dist", {"exiting": "bench_exiting_ep"})
    (site / "bench_exiting_ep.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.warns(UserWarning, match="exiting-dist.*SystemExit"):
        names = architectures.available()
    assert "unet_thesis" in names
    assert "SystemExit" in architectures.plugin_errors()["exiting"]


def test_entry_point_interrupted_at_import_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    _fake_distribution(site, "hanging-dist", {"hanging": "bench_hanging_ep"})
    (site / "bench_hanging_ep.py").write_text("raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ArchitectureError, match=r"interrupted \(Ctrl-C\).*'hanging-dist'"):
        architectures.available()
