"""``bench data info`` and ``bench data fetch`` through the real CLI entry point."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from bench.cli import main


def _json(capsys) -> dict:
    out = capsys.readouterr().out
    return json.loads(out)


def test_info_wbc1_json(wbc_dir, capsys):
    assert main(["data", "info", "wbc1", "--data-dir", str(wbc_dir), "--json"]) == 0
    info = _json(capsys)
    assert info["count"] == 300
    assert info["sizes"]["120x120"] == 224
    assert sum(info["sizes"].values()) == 300
    assert sum(info["class_fractions"].values()) == pytest.approx(1.0)
    assert info["protocols"]["thesis"]["train"] == 418
    assert info["protocols"]["thesis"]["test"] == 30


def test_info_synthetic_json_needs_no_data_dir(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "does_not_exist"))
    assert main(["data", "info", "synthetic", "--json", "--count", "6", "--size", "48"]) == 0
    info = _json(capsys)
    assert info["count"] == 6
    assert info["sizes"] == {"48x48": 6}
    assert set(info["class_fractions"]) == {"background", "cytoplasm", "nucleus"}
    assert "protocols" in info
    assert not (tmp_path / "does_not_exist").exists()


def test_info_synthetic_default_json(capsys):
    assert main(["data", "info", "synthetic", "--json"]) == 0
    info = _json(capsys)
    assert info["count"] == 60 and info["sizes"] == {"120x120": 60}


def test_info_table(capsys):
    assert main(["data", "info", "synthetic", "--count", "4", "--size", "40"]) == 0
    out = capsys.readouterr().out
    assert "images    4" in out
    assert "40x40" in out
    assert "nucleus" in out and "%" in out
    assert "protocol splits" in out


def test_info_folder_with_palette(tmp_path, capsys):
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:4] = 7
    Image.fromarray(image).save(tmp_path / "a.bmp")
    Image.fromarray(mask).save(tmp_path / "a.png")
    argv = ["data", "info", f"folder:{tmp_path}", "--palette", "0:0,7:1", "--json"]
    assert main(argv) == 0
    info = _json(capsys)
    assert info["class_fractions"] == {"class0": 0.5, "class1": 0.5}


def test_info_unknown_dataset_lists_the_known_ones(capsys):
    assert main(["data", "info", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "wbc1" in err and "synthetic" in err and "folder:PATH" in err


def test_info_wbc1_missing_says_how_to_fix(tmp_path, capsys):
    assert main(["data", "info", "wbc1", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bench data fetch wbc1" in err and str(tmp_path) in err


def test_synthetic_options_rejected_for_other_datasets(wbc_dir, capsys):
    assert main(["data", "info", "wbc1", "--data-dir", str(wbc_dir), "--count", "5"]) == 2
    assert "--count" in capsys.readouterr().err


def test_bad_synthetic_size_names_the_option(capsys):
    assert main(["data", "info", "synthetic", "--size", "8"]) == 2
    assert "--size" in capsys.readouterr().err


def test_fetch_from_a_local_archive_then_skip(tmp_path, capsys, monkeypatch):
    """The CLI path of fetch; the HTTP paths are covered in test_fetch.py."""
    import bench.fetch

    data = b"hello"
    manifest = tmp_path / "tiny.sha256"
    import hashlib

    manifest.write_text(f"{hashlib.sha256(data).hexdigest()}  Dataset 1/001.bmp\n")
    card = dict(bench.fetch.load_card("wbc1"), manifest="tiny.sha256")
    monkeypatch.setattr(bench.fetch, "load_card", lambda name: card)
    monkeypatch.setattr(bench.fetch, "card_file", lambda name: manifest)
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("segmentation_WBC-abc/Dataset 1/001.bmp", data)
    data_dir = tmp_path / "data"
    argv = ["data", "fetch", "wbc1", "--data-dir", str(data_dir), "--url", archive.as_uri()]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(data_dir / "segmentation_WBC")
    assert main(argv) == 0
    assert "already present and verified" in capsys.readouterr().err


def test_fetch_network_failure_exit_code(tmp_path, capsys):
    url = (tmp_path / "missing.zip").as_uri()
    assert main(["data", "fetch", "wbc1", "--data-dir", str(tmp_path), "--url", url]) == 2
    err = capsys.readouterr().err
    assert "missing.zip" in err and "--url" in err
