"""``bench list``: columns, JSON, plugins, and a failing architecture listed with its error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import platformdirs
import pytest
from torch import nn

import architectures
from architectures import registry
from bench import cmd_list, count_cache
from bench.cli import main

PLUGINS = Path(__file__).parent / "plugins"


# Every test starts with the built-ins and no plugin, and what it registers is forgotten.
pytestmark = pytest.mark.usefixtures("fresh_registry")


def test_list_json_unet_thesis(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--json", "unet_thesis"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == ["unet_thesis"]
    row = rows[0]
    assert {"name", "source", "params", "gflops", "width", "encoder", "width_note"} <= set(row)
    assert "error" not in row
    assert row["source"] == "builtin"
    assert row["params"] == 26_230_851  # default width 1.0: the Keras model's count
    assert 10 < row["gflops"] < 20  # ~7.6 GMACs at 120x120, 2 flops each
    assert row["width"] == 1.0 and row["encoder"] is None  # no encoder option
    assert row["width_note"] == "every conv stage, min 16 ch"
    assert row["description"]


def _rows(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict]:
    assert main(["list", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_list_width_gives_the_counts_of_the_model_that_is_trained(
    capsys: pytest.CaptureFixture[str],
) -> None:
    thesis = "[dsu][en]*"  # deconvnet, segnet_basic, unet_thesis
    full = {row["name"]: row for row in _rows(capsys, "--width", "1", thesis)}
    quarter = {row["name"]: row for row in _rows(capsys, "--width", "0.25", thesis)}
    assert full.keys() == quarter.keys() == {"unet_thesis", "segnet_basic", "deconvnet"}
    assert quarter["unet_thesis"]["params"] == 1_643_283
    assert quarter["unet_thesis"]["width"] == 0.25
    for name in full:
        assert quarter[name]["params"] < full[name]["params"], name
        assert quarter[name]["gflops"] < full[name]["gflops"], name
    for name in ("smp_unet", "smp_linknet"):
        full[name], quarter[name] = (_rows(capsys, "--width", w, name)[0] for w in ("1", "0.25"))
    assert quarter["smp_unet"]["params"] < full["smp_unet"]["params"]
    # Linknet has no decoder width: the same model, and the note says so.
    assert quarter["smp_linknet"]["params"] == full["smp_linknet"]["params"]
    assert quarter["smp_linknet"]["width_note"].startswith("ignored")


def test_list_encoder_gives_the_smp_counts_with_that_encoder(
    capsys: pytest.CaptureFixture[str],
) -> None:
    (default,) = _rows(capsys, "--width", "0.25", "smp_unet")
    (small,) = _rows(capsys, "--width", "0.25", "--encoder", "mobilenet_v2", "smp_unet")
    assert default["encoder"] == "resnet34" and small["encoder"] == "mobilenet_v2"
    assert small["params"] < 4_000_000 < 20_000_000 < default["params"]
    assert small["width_note"] == "decoder only, min 16 ch; encoder at full size"
    (thesis,) = _rows(capsys, "--width", "0.25", "--encoder", "mobilenet_v2", "unet_thesis")
    assert thesis["encoder"] is None and thesis["params"] == 1_643_283


def test_list_counts_equal_those_of_a_real_build(capsys: pytest.CaptureFixture[str]) -> None:
    """The list builds on the meta device; its numbers are those of the model trained."""
    for name, options in (("segnet_basic", {}), ("smp_unet", {"encoder": "resnet18"})):
        model = architectures.build(name, width=0.25, **options)
        argv = ["--width", "0.25", "--encoder", "resnet18", name]
        (row,) = _rows(capsys, *argv)
        assert row["params"] == architectures.count_parameters(model)
        assert row["gflops"] == round(architectures.forward_gflops(model, (120, 120)), 4)


def test_list_falls_back_to_a_cpu_build_when_meta_cannot_run_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    @architectures.register_architecture("test_needs_real_tensors")
    def needs_real(num_classes: int = 3, in_channels: int = 3, width: float = 1.0) -> nn.Module:
        """Reads a tensor's value while it is built."""
        conv = nn.Conv2d(in_channels, num_classes, 1)
        assert conv.weight.abs().sum().item() > 0  # impossible on the meta device
        return conv

    (row,) = _rows(capsys, "test_needs_real_tensors")
    assert "error" not in row and row["params"] == 12 and row["width_note"] == ""


def test_list_table_shows_the_width_note_and_the_configuration(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["list", "--width", "0.25", "--encoder", "resnet18", "smp_linknet"]
    assert main(argv) == 0
    caption, header, line = capsys.readouterr().out.splitlines()
    assert caption.startswith("width 0.25, smp encoder resnet18:")
    assert header.split()[:6] == ["NAME", "SOURCE", "PARAMS", "GFLOPS", "WIDTH", "SCALES"]
    assert "ignored: Linknet has no decoder width; encoder at full size" in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--width", "0"], "--width must be in (0, 4]"),
        (["--width", "nan"], "--width must be in (0, 4]"),
        (["--width", "5"], "--width must be in (0, 4]"),
        (["--encoder", "resnet35", "smp_unet"], "--encoder: unknown encoder 'resnet35'"),
    ],
)
def test_list_bad_width_or_encoder_is_refused(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["list", *argv]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_list_with_plugin_file_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--plugin", str(PLUGINS / "good_plugin.py"), "test_good_*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "width 1: parameters and GFLOPs (one 3x120x120 image) of the models as bench run "
        "trains them"
    )
    header = ["NAME", "SOURCE", "PARAMS", "GFLOPS", "WIDTH", "SCALES", "DESCRIPTION"]
    assert out[1].split() == header
    assert out[2].split()[:2] == ["test_good_plugin_net", "plugin:good_plugin.py"]
    assert "not stated" in out[2]  # the plugin gives no width note
    assert len(out) == 3


def test_list_broken_plugin_file_is_reported_and_the_rest_listed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "list",
        "--json",
        "--plugin",
        str(PLUGINS / "broken_import_plugin.py"),
        "--plugin",
        str(PLUGINS / "wrong_shape_plugin.py"),
        "--plugin",
        str(PLUGINS / "good_plugin.py"),
        "test_*",
    ]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "broken_import_plugin.py" in captured.err
    assert "wrong_shape_plugin.py" in captured.err
    assert [row["name"] for row in json.loads(captured.out)] == ["test_good_plugin_net"]


def test_failing_build_is_listed_with_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    @architectures.register_architecture("test_failing_build")
    def failing(num_classes: int = 3, in_channels: int = 3, width: float = 1.0) -> nn.Module:
        """Always fails."""
        raise RuntimeError("out of cheese")

    assert main(["list", "--json", "test_failing_build"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["params"] is None and row["gflops"] is None
    assert "out of cheese" in row["error"] and "test_failing_build" in row["error"]


def test_list_no_match(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--json", "nothing_matches_*"]) == 0
    assert json.loads(capsys.readouterr().out) == []


# --------------------------------------------------------------------------- the count cache


def _count_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("counts-*.json"))


def test_cached_counts_are_those_of_a_fresh_build(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    count_cache_dir: Path,
) -> None:
    """The second list reads every count from the cache (nothing is built: building would
    fail) and gives exactly the parameters and GFLOPs of the models built now."""
    names = ("unet_thesis", "segnet_basic", "deconvnet", "smp_unet", "smp_fpn")
    argv = ["--width", "0.25", "--encoder", "resnet18", "[dsu]*"]
    first = {row["name"]: row for row in _rows(capsys, *argv) if row["name"] in names}
    assert len(_count_files(count_cache_dir)) == len(architectures.available("[dsu]*"))

    def no_build(*args: object) -> None:
        raise AssertionError("a cached model was built again")

    monkeypatch.setattr(cmd_list, "_measure", no_build)
    second = {row["name"]: row for row in _rows(capsys, *argv) if row["name"] in names}
    assert second == first
    for name in names:
        options = architectures.architecture_options(name, "resnet18")
        model = architectures.build(name, width=0.25, **options)
        assert second[name]["params"] == architectures.count_parameters(model), name
        assert second[name]["gflops"] == round(architectures.forward_gflops(model), 4), name


def test_a_width_or_encoder_not_cached_is_built(
    capsys: pytest.CaptureFixture[str], count_cache_dir: Path
) -> None:
    (narrow,) = _rows(capsys, "--width", "0.25", "--encoder", "resnet18", "smp_unet")
    (wide,) = _rows(capsys, "--width", "0.5", "--encoder", "resnet18", "smp_unet")
    (other,) = _rows(capsys, "--width", "0.25", "--encoder", "mobilenet_v2", "smp_unet")
    assert len({narrow["params"], wide["params"], other["params"]}) == 3
    assert len(_count_files(count_cache_dir)) == 3


def _write_plugin(path: Path, kernel: int) -> None:
    path.write_text(
        "from torch import nn\n"
        "from architectures import register_architecture\n\n\n"
        '@register_architecture("test_cached_net")\n'
        "def net(num_classes=3, in_channels=3, width=1.0):\n"
        '    """Test plugin: one convolution."""\n'
        f"    return nn.Conv2d(in_channels, num_classes, {kernel}, padding={kernel // 2})\n",
        encoding="utf-8",
    )


def _registry_without_plugins() -> registry.Registry:
    specs = registry.default.specs()
    return registry.Registry(spec for spec in specs if not spec.source.startswith("plugin:"))


def test_a_changed_source_file_invalidates_its_counts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plugin = tmp_path / "cached_plugin.py"
    _write_plugin(plugin, kernel=1)
    argv = ["--plugin", str(plugin), "test_cached_net"]
    assert _rows(capsys, *argv)[0]["params"] == 3 * 3 + 3
    # A new process (here: a new registry) with the file unchanged reads the cached count,
    monkeypatch.setattr(registry, "default", _registry_without_plugins())
    measure = cmd_list._measure
    monkeypatch.setattr(cmd_list, "_measure", lambda *args: (-1, -1.0))
    assert _rows(capsys, *argv)[0]["params"] == 12
    # but once the file changes its model is built and counted again.
    monkeypatch.setattr(cmd_list, "_measure", measure)
    _write_plugin(plugin, kernel=3)
    monkeypatch.setattr(registry, "default", _registry_without_plugins())
    assert _rows(capsys, *argv)[0]["params"] == 3 * 3 * 9 + 3


def test_a_builtins_count_key_covers_the_architectures_package() -> None:
    """Editing any module of ``architectures`` (a model's, the shared layers) changes the key
    of every built-in's counts; the file defining the factory is the model's own."""
    spec = cmd_list._spec_fields(architectures.get_spec("unet_thesis"))
    package = Path(architectures.__file__).parent
    assert spec["factory_file"] == str(package / "unet_thesis.py")
    assert set(count_cache.architectures_files()) >= {
        str(package / name) for name in ("unet_thesis.py", "layers.py", "measure.py")
    }


def test_a_corrupt_cache_file_is_ignored_and_rewritten(
    capsys: pytest.CaptureFixture[str], count_cache_dir: Path
) -> None:
    argv = ["--width", "0.25", "segnet_basic"]
    (expected,) = _rows(capsys, *argv)
    (path,) = _count_files(count_cache_dir)
    for garbage in (b"{not json", b"\xff\xfe", b"[]", b'{"format": 1, "params": "many"}', b""):
        path.write_bytes(garbage)
        assert _rows(capsys, *argv) == [expected]
        assert json.loads(path.read_text(encoding="utf-8"))["params"] == expected["params"]


def test_an_unwritable_cache_only_costs_time(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("", encoding="utf-8")
    monkeypatch.setenv(count_cache.CACHE_DIR_ENV, str(not_a_folder))
    (row,) = _rows(capsys, "--width", "0.25", "unet_thesis")
    assert row["params"] == 1_643_283


def test_the_cache_folder_is_the_users_unless_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(count_cache.CACHE_DIR_ENV)
    user = Path(platformdirs.user_cache_dir("bench"))
    assert count_cache.cache_dir() == user / "architecture-counts"
    monkeypatch.setenv(count_cache.CACHE_DIR_ENV, "~/elsewhere")
    assert count_cache.cache_dir() == Path("~/elsewhere").expanduser()


def test_the_entry_point_group_is_the_registrys() -> None:
    assert count_cache.ENTRY_POINT_GROUP == registry.ENTRY_POINT_GROUP


def test_a_changed_registry_file_invalidates_the_cached_registry(tmp_path: Path) -> None:
    factory_file = tmp_path / "plugin_module.py"
    factory_file.write_text("# version 1\n", encoding="utf-8")
    spec = {"name": "x", "source": "plugin:p", "description": "", "width_note": ""}
    specs = [{**spec, "factory_file": str(factory_file)}]
    count_cache.write_registry(specs, [str(factory_file)])
    assert count_cache.read_registry() == specs
    factory_file.write_text("# version 2\n", encoding="utf-8")
    assert count_cache.read_registry() is None


LIST_IN_A_FRESH_PROCESS = (
    "import sys\n"
    "from bench.cli import main\n"
    "status = main(['list', '--json', '--width', '0.25', 'unet_thesis'])\n"
    "print('torch imported:', 'torch' in sys.modules, file=sys.stderr)\n"
    "sys.exit(status)\n"
)


def test_a_warm_list_answers_from_the_cache_without_torch(count_cache_dir: Path) -> None:
    """In a new process, the first list builds and caches; the second gives the same output
    from the cache without importing torch (what makes it fast)."""

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", LIST_IN_A_FRESH_PROCESS],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )

    cold, warm = run(), run()
    assert "torch imported: True" in cold.stderr
    assert "torch imported: False" in warm.stderr, warm.stderr
    assert warm.stdout == cold.stdout
    assert json.loads(warm.stdout)[0]["params"] == 1_643_283
    assert list(count_cache_dir.glob("registry-*.json"))
