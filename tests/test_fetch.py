"""Download, safe extraction and manifest verification, against a loopback HTTP server."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import stat
import struct
import tarfile
import threading
import warnings
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import bench.fetch
from bench.data import card_file, load_card, load_dataset
from bench.errors import ConfigError, DataError
from bench.fetch import MAX_UNPACKED_BYTES, fetch_dataset, safe_extract, verify_manifest

TOP = "segmentation_WBC-0123abc"
FILES = {
    "Dataset 1/001.bmp": b"image one",
    "Dataset 1/001.png": b"mask one",
    "LICENSE": b"GPL-3.0 text",
    "README.rst": b"readme",
}


# --------------------------------------------------------------------------- helpers


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that stops reading (a refused download) is expected here


@pytest.fixture
def server(tmp_path):
    """Serve ``tmp_path / "www"`` on 127.0.0.1; yields ``(folder, base_url)``."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(www))
    httpd = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _manifest(path: Path, files: dict[str, bytes]) -> Path:
    lines = sorted(f"{hashlib.sha256(data).hexdigest()}  {name}" for name, data in files.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def _zip(path: Path, files: dict[str, bytes], top: str | None = TOP) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        if top:
            zf.writestr(f"{top}/", b"")
        for name, data in files.items():
            zf.writestr(f"{top}/{name}" if top else name, data)
    return path


def _tar(path: Path, files: dict[str, bytes], top: str = TOP) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fake_card(tmp_path, monkeypatch):
    """Point ``fetch_dataset('wbc1')`` at a tiny manifest of FILES (the real card otherwise)."""
    manifest = _manifest(tmp_path / "tiny.sha256", FILES)
    card = dict(load_card("wbc1"), manifest="tiny.sha256")
    monkeypatch.setattr(bench.fetch, "load_card", lambda name: card)
    monkeypatch.setattr(
        bench.fetch, "card_file", lambda name: manifest if name == "tiny.sha256" else None
    )
    return manifest


def _leftovers(data_dir: Path) -> list[str]:
    """Temporary downloads or extraction folders left in the data dir (none if it is gone)."""
    if not data_dir.exists():
        return []
    return sorted(p.name for p in data_dir.iterdir() if p.name.startswith("."))


def _snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` with each file's SHA-256 and mtime: equal means untouched."""
    if not folder.exists():
        return {}
    state = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            state[rel] = f"link -> {os.readlink(path)}"
        elif path.is_dir():
            state[rel] = "folder"
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            state[rel] = f"{digest} {path.stat().st_mtime_ns}"
    return state


def _user_data_dir(data_dir: Path) -> None:
    """A data dir that also holds the user's own things, which fetch must never touch."""
    (data_dir / "my_dataset").mkdir(parents=True)
    (data_dir / "my_dataset" / "notes.txt").write_bytes(b"my own notes")
    (data_dir / "readme.txt").write_bytes(b"mine")


# --------------------------------------------------------------------------- fetching


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_fetch_extracts_strips_top_folder_and_verifies(server, fake_card, tmp_path, kind, capsys):
    www, base = server
    build = _zip if kind == "zip" else _tar
    build(www / f"archive.{kind}", {**FILES, "Dataset 2/extra.bmp": b"kept, not verified"})
    data_dir = tmp_path / "data"
    root = fetch_dataset("wbc1", data_dir, url=f"{base}/archive.{kind}")
    assert root == data_dir / "segmentation_WBC"
    for name, data in FILES.items():
        assert (root / name).read_bytes() == data
    assert (root / "Dataset 2" / "extra.bmp").is_file()
    assert _leftovers(data_dir) == []
    assert "verified 4 files" in capsys.readouterr().err


def test_second_fetch_skips_the_download(server, fake_card, tmp_path, capsys):
    www, base = server
    _zip(www / "a.zip", FILES)
    data_dir = tmp_path / "data"
    fetch_dataset("wbc1", data_dir, url=f"{base}/a.zip")
    capsys.readouterr()
    # The URL no longer exists: a second fetch must not even try it.
    root = fetch_dataset("wbc1", data_dir, url=f"{base}/gone.zip")
    assert root == data_dir / "segmentation_WBC"
    assert "already present and verified" in capsys.readouterr().err


def test_data_dir_that_already_holds_the_data_is_accepted(fake_card, tmp_path, capsys):
    for name, data in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    assert fetch_dataset("wbc1", tmp_path, url="http://127.0.0.1:9/never") == tmp_path


def test_checksum_failure_installs_nothing_and_names_the_file(server, fake_card, tmp_path):
    www, base = server
    _zip(www / "bad.zip", {**FILES, "Dataset 1/001.png": b"tampered"})
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match=r"checksum mismatch: Dataset 1/001\.png") as info:
        fetch_dataset("wbc1", data_dir, url=f"{base}/bad.zip", progress=False)
    assert "001.bmp" not in str(info.value)
    assert not (data_dir / "segmentation_WBC").exists()
    assert _leftovers(data_dir) == []


def test_missing_file_fails_verification(server, fake_card, tmp_path):
    www, base = server
    _zip(www / "short.zip", {k: v for k, v in FILES.items() if k != "LICENSE"})
    with pytest.raises(DataError, match="missing: LICENSE"):
        fetch_dataset("wbc1", tmp_path / "d", url=f"{base}/short.zip", progress=False)
    assert not (tmp_path / "d" / "segmentation_WBC").exists()


def test_existing_folder_that_fails_verification_is_refused_and_kept(server, fake_card, tmp_path):
    """A previous copy that does not verify is never replaced: the user decides what to do."""
    www, base = server
    _zip(www / "a.zip", FILES)
    data_dir = tmp_path / "data"
    previous = data_dir / "segmentation_WBC"
    for name, data in FILES.items():
        (previous / name).parent.mkdir(parents=True, exist_ok=True)
        (previous / name).write_bytes(data)
    (previous / "Dataset 1" / "001.bmp").write_bytes(b"stale")
    (previous / "Dataset 1" / "my_annotations.csv").write_bytes(b"the user's own work")
    before = _snapshot(data_dir)
    with pytest.raises(DataError) as info:
        fetch_dataset("wbc1", data_dir, url=f"{base}/a.zip", progress=False)
    message = str(info.value)
    assert str(data_dir / "segmentation_WBC") in message
    assert "checksum mismatch: Dataset 1/001.bmp" in message
    assert "move" in message and "--data-dir" in message
    assert _snapshot(data_dir) == before
    assert _leftovers(data_dir) == []


def test_user_folder_without_dataset_1_is_refused_and_kept(server, fake_card, tmp_path):
    www, base = server
    _zip(www / "a.zip", FILES)
    data_dir = tmp_path / "data"
    mine = data_dir / "segmentation_WBC"
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_bytes(b"months of work")
    (mine / "figures").mkdir()
    (mine / "figures" / "f1.png").write_bytes(b"png")
    before = _snapshot(data_dir)
    with pytest.raises(DataError, match="no 'Dataset 1/' folder") as info:
        fetch_dataset("wbc1", data_dir, url=f"{base}/a.zip", progress=False)
    assert str(mine) in str(info.value) and "--data-dir" in str(info.value)
    assert _snapshot(data_dir) == before
    assert (mine / "thesis.tex").read_bytes() == b"months of work"


@pytest.mark.parametrize("kind", ["file", "empty folder", "broken link"])
def test_other_things_at_the_target_are_refused_and_kept(server, fake_card, tmp_path, kind):
    www, base = server
    _zip(www / "a.zip", FILES)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    target = data_dir / "segmentation_WBC"
    if kind == "file":
        target.write_bytes(b"a file of that name")
    elif kind == "empty folder":
        target.mkdir()
    else:
        target.symlink_to(tmp_path / "nowhere")
    before = _snapshot(data_dir)
    with pytest.raises(DataError, match="not a complete, verified copy") as info:
        fetch_dataset("wbc1", data_dir, url=f"{base}/a.zip", progress=False)
    assert str(target) in str(info.value)
    assert _snapshot(data_dir) == before


def test_data_dir_holding_a_broken_copy_is_refused_and_kept(server, fake_card, tmp_path):
    """Dataset 1/ in the data dir itself would shadow a download: refuse, touch nothing."""
    www, base = server
    _zip(www / "a.zip", FILES)
    for name, data in FILES.items():
        (tmp_path / "d" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / name).write_bytes(data)
    (tmp_path / "d" / "LICENSE").write_bytes(b"edited")
    before = _snapshot(tmp_path / "d")
    with pytest.raises(DataError, match="checksum mismatch: LICENSE") as info:
        fetch_dataset("wbc1", tmp_path / "d", url=f"{base}/a.zip", progress=False)
    assert str(tmp_path / "d" / "Dataset 1") in str(info.value)
    assert _snapshot(tmp_path / "d") == before


def test_failed_download_leaves_the_users_data_dir_unchanged(server, fake_card, tmp_path):
    www, base = server
    _zip(www / "bad.zip", {**FILES, "LICENSE": b"tampered"})
    data_dir = tmp_path / "data"
    _user_data_dir(data_dir)
    before = _snapshot(data_dir)
    with pytest.raises(DataError, match="checksum mismatch: LICENSE"):
        fetch_dataset("wbc1", data_dir, url=f"{base}/bad.zip", progress=False)
    assert _snapshot(data_dir) == before


@pytest.mark.parametrize("appears", ["folder with a file", "empty folder"])
def test_target_appearing_during_the_fetch_is_not_replaced(
    server, fake_card, tmp_path, monkeypatch, appears
):
    """Someone creates the target while fetch extracts: the final rename must not clobber it."""
    www, base = server
    _zip(www / "a.zip", FILES)
    data_dir = tmp_path / "data"
    target = data_dir / "segmentation_WBC"
    real_extract = bench.fetch.safe_extract

    def extract_then_race(*args, **kwargs):
        real_extract(*args, **kwargs)
        target.mkdir()
        if appears == "folder with a file":
            (target / "theirs.txt").write_bytes(b"theirs")

    monkeypatch.setattr(bench.fetch, "safe_extract", extract_then_race)
    with pytest.raises(DataError, match="appeared while fetching"):
        fetch_dataset("wbc1", data_dir, url=f"{base}/a.zip", progress=False)
    expected = {"theirs.txt"} if appears == "folder with a file" else set()
    assert {p.name for p in target.iterdir()} == expected
    assert _leftovers(data_dir) == []


def test_refusal_is_printed_even_with_quiet_and_exits_2(fake_card, tmp_path, capsys, monkeypatch):
    import argparse

    import bench.cli
    from bench import cmd_data

    def data_only_parser() -> argparse.ArgumentParser:  # the real main, without torch imports
        parser = argparse.ArgumentParser(prog="bench")
        cmd_data.register(parser.add_subparsers(dest="command"))
        return parser

    monkeypatch.setattr(bench.cli, "build_parser", data_only_parser)
    data_dir = tmp_path / "data"
    (data_dir / "segmentation_WBC").mkdir(parents=True)
    (data_dir / "segmentation_WBC" / "mine.txt").write_bytes(b"mine")
    before = _snapshot(data_dir)
    argv = ["data", "fetch", "wbc1", "--data-dir", str(data_dir), "--quiet"]
    assert bench.cli.main([*argv, "--url", "http://127.0.0.1:9/never.zip"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(data_dir / "segmentation_WBC") in captured.err
    assert "not a complete, verified copy" in captured.err
    assert _snapshot(data_dir) == before


def test_http_error_names_the_url_and_suggests_options(server, fake_card, tmp_path):
    _, base = server
    url = f"{base}/no_such_archive.zip"
    with pytest.raises(DataError) as info:
        fetch_dataset("wbc1", tmp_path / "d", url=url, progress=False)
    message = str(info.value)
    assert url in message and "--url" in message and "--data-dir" in message
    assert _leftovers(tmp_path / "d") == []


def test_connection_refused_is_a_data_error(fake_card, tmp_path):
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/a.zip"
    with pytest.raises(DataError, match="cannot download"):
        fetch_dataset("wbc1", tmp_path / "d", url=url, timeout=5, progress=False)


def test_file_url_and_local_path(fake_card, tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", FILES)
    assert fetch_dataset("wbc1", tmp_path / "d1", url=archive.as_uri(), progress=False).is_dir()
    assert fetch_dataset("wbc1", tmp_path / "d2", url=str(archive), progress=False).is_dir()
    with pytest.raises(ConfigError, match="--url"):
        fetch_dataset("wbc1", tmp_path / "d3", url="gopher://x/y", progress=False)


def test_not_an_archive(server, fake_card, tmp_path):
    www, base = server
    (www / "page.zip").write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match="neither a zip nor a tar"):
        fetch_dataset("wbc1", tmp_path / "d", url=f"{base}/page.zip", progress=False)


def test_synthetic_has_nothing_to_fetch(tmp_path):
    with pytest.raises(ConfigError, match="nothing to fetch"):
        fetch_dataset("synthetic", tmp_path)
    with pytest.raises(ConfigError, match="wbc1"):
        fetch_dataset("no_such_dataset", tmp_path)


# --------------------------------------------------------------------------- safe extraction


def _zip_with(path: Path, name: str, data: bytes = b"x", mode: int | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("top/ok.txt", b"fine")
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.create_system = 3
            info.external_attr = mode << 16
        zf.writestr(info, data)
    return path


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        ok = tarfile.TarInfo("top/ok.txt")
        ok.size = 4
        tf.addfile(ok, io.BytesIO(b"fine"))
        member.size = len(data) if member.isfile() else 0
        tf.addfile(member, io.BytesIO(data) if data else None)
    return path


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("/etc/evil.txt", "absolute"),
        ("top/../../evil.txt", r"'\.\.'"),
        ("..\\evil.txt", r"'\.\.'"),
        ("C:/evil.txt", "absolute"),
    ],
)
def test_zip_with_unsafe_names_is_rejected(tmp_path, name, reason):
    archive = _zip_with(tmp_path / "evil.zip", name)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=reason):
        safe_extract(archive, dest)
    assert not (tmp_path / "evil.txt").exists()
    assert list(dest.rglob("*")) == []  # checked before anything is written


def test_zip_with_symlink_is_rejected(tmp_path):
    archive = _zip_with(tmp_path / "link.zip", "top/link", b"/etc/passwd", stat.S_IFLNK | 0o777)
    with pytest.raises(DataError, match="symbolic link"):
        safe_extract(archive, tmp_path / "dest")


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_tar_member("/abs/evil.txt"), "absolute"),
        (_tar_member("top/../../evil.txt"), r"'\.\.'"),
        (_tar_member("top/link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (_tar_member("top/hard", tarfile.LNKTYPE, "top/ok.txt"), "hard link"),
        (_tar_member("top/dev", tarfile.CHRTYPE), "device"),
        (_tar_member("top/fifo", tarfile.FIFOTYPE), "FIFO"),
    ],
)
def test_tar_with_unsafe_members_is_rejected(tmp_path, member, reason):
    archive = _tar_with(tmp_path / "evil.tar.gz", member, b"x" if member.isfile() else b"")
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=reason):
        safe_extract(archive, dest)
    assert not (tmp_path / "evil.txt").exists()
    assert list(dest.rglob("*")) == []


def test_malicious_archive_through_fetch_installs_nothing(server, fake_card, tmp_path):
    www, base = server
    _zip_with(www / "evil.zip", "../evil.txt")
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match="evil.txt"):
        fetch_dataset("wbc1", data_dir, url=f"{base}/evil.zip", progress=False)
    assert not (data_dir / "segmentation_WBC").exists()
    assert not (tmp_path / "evil.txt").exists()
    assert _leftovers(data_dir) == []


def test_corrupt_zip_is_a_data_error(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"big.bin": bytes(range(256)) * 400})
    data = bytearray(archive.read_bytes())
    data[200:400] = b"\xff" * 200  # damage the stored member's bytes, keep the directory
    archive.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"a\.zip"):
        safe_extract(archive, tmp_path / "dest")


def _raw_zip(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    """A zip with exactly these entries, duplicates included (zipfile warns; we mean it)."""
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as zf:
        warnings.simplefilter("ignore", UserWarning)
        for name, data in entries:
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([("top/a", b"file"), ("top/a/", b"")], "both a file"),
        ([("top/a", b"file"), ("top/a/b.txt", b"under a file")], "both a file"),
        ([("top/a/b.txt", b"x"), ("top/a", b"file")], "both a file"),
        ([("top/x.txt", b"one"), ("top/x.txt", b"two")], "same file"),
        ([("top/x.txt", b"one"), ("top//./x.txt", b"two")], "same file"),
        ([("top/x.txt", b"one"), ("top\\x.txt", b"two")], "same file"),
    ],
)
def test_zip_with_colliding_members_is_refused_before_writing(tmp_path, entries, reason):
    archive = _raw_zip(tmp_path / "clash.zip", entries)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=reason) as info:
        safe_extract(archive, dest, label="https://example.org/clash.zip")
    assert "https://example.org/clash.zip" in str(info.value)
    assert repr(entries[1][0]) in str(info.value) or repr(entries[0][0]) in str(info.value)
    assert not dest.exists()  # not a byte written, not even the folder


def test_tar_with_a_file_and_folder_of_one_name_is_refused(tmp_path):
    archive = _tar_with(tmp_path / "clash.tar.gz", _tar_member("top/ok.txt", tarfile.DIRTYPE))
    with pytest.raises(DataError, match="both a file") as info:
        safe_extract(archive, tmp_path / "dest")
    assert "top/ok.txt" in str(info.value)
    assert not (tmp_path / "dest").exists()


def test_colliding_members_through_fetch_name_the_url(server, fake_card, tmp_path):
    www, base = server
    _raw_zip(www / "clash.zip", [(f"{TOP}/LICENSE", b"file"), (f"{TOP}/LICENSE/x", b"x")])
    data_dir = tmp_path / "data"
    _user_data_dir(data_dir)
    before = _snapshot(data_dir)
    url = f"{base}/clash.zip"
    with pytest.raises(DataError, match="both a file") as info:
        fetch_dataset("wbc1", data_dir, url=url, progress=False)
    assert url in str(info.value) and f"{TOP}/LICENSE" in str(info.value)
    assert _snapshot(data_dir) == before


def test_extraction_never_overwrites_an_existing_file(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"new.txt": b"new", "mine.txt": b"from the archive"})
    dest = tmp_path / "dest"
    (dest / TOP).mkdir(parents=True)
    (dest / TOP / "mine.txt").write_bytes(b"mine")
    before = _snapshot(dest)
    with pytest.raises(DataError, match="would overwrite"):
        safe_extract(archive, dest)
    assert _snapshot(dest) == before  # new.txt, written first, was removed again


def _bomb(path: Path, size: int = 2_000_000) -> Path:
    """A small zip (a few kB) that unpacks to ``size`` bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{TOP}/ok.txt", b"fine")
        zf.writestr(f"{TOP}/zeros.bin", bytes(size))
    return path


def test_default_limit_is_generous_for_the_real_data():
    # Dataset 1 is about 14 MB and Dataset 2 a few tens of MB: far below the limit.
    assert MAX_UNPACKED_BYTES >= 512 * 2**20


def test_zip_bomb_is_refused_before_writing(tmp_path):
    archive = _bomb(tmp_path / "bomb.zip")
    assert archive.stat().st_size < 20_000
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="limit") as info:
        safe_extract(archive, dest, max_bytes=100_000)
    assert "bomb.zip" in str(info.value)
    assert not dest.exists()


def test_tar_bomb_is_refused_before_writing(tmp_path):
    archive = _tar(tmp_path / "bomb.tar.gz", {"zeros.bin": bytes(2_000_000)})
    with pytest.raises(DataError, match="limit"):
        safe_extract(archive, tmp_path / "dest", max_bytes=100_000)
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_too_many_members_are_refused(tmp_path, kind):
    build = _zip if kind == "zip" else _tar
    archive = build(tmp_path / f"many.{kind}", {f"f{i}.txt": b"x" for i in range(20)})
    with pytest.raises(DataError, match="more than 10 members"):
        safe_extract(archive, tmp_path / "dest", max_members=10)
    assert not (tmp_path / "dest").exists()


def test_zip_bomb_through_fetch_changes_nothing(server, fake_card, tmp_path):
    www, base = server
    _bomb(www / "bomb.zip")
    data_dir = tmp_path / "data"
    _user_data_dir(data_dir)
    before = _snapshot(data_dir)
    url = f"{base}/bomb.zip"
    with pytest.raises(DataError, match="limit") as info:
        fetch_dataset("wbc1", data_dir, url=url, progress=False, max_bytes=100_000)
    assert url in str(info.value)
    assert _snapshot(data_dir) == before


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_header_that_lies_is_caught_while_writing(tmp_path, monkeypatch, kind):
    """The pre-check believes the headers; the copy counts the real bytes and stops."""
    build = _zip if kind == "zip" else _tar
    archive = build(tmp_path / f"liar.{kind}", {"a.txt": b"small", "big.bin": bytes(300_000)})
    lister = "_zip_members" if kind == "zip" else "_tar_members"
    real = getattr(bench.fetch, lister)

    def understated(*args):
        return [m._replace(size=min(m.size, 10)) for m in real(*args)]

    monkeypatch.setattr(bench.fetch, lister, understated)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="more data than its header says") as info:
        safe_extract(archive, dest, max_bytes=1_000)
    assert "big.bin" in str(info.value)
    assert not dest.exists()  # what was written (a.txt) was removed again


def test_zip_whose_header_understates_the_size_is_refused(server, fake_card, tmp_path):
    """A real lying header: the central directory says 10 bytes, the data inflates to 300 kB."""
    www, base = server
    archive = www / "liar.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content in {**FILES, "zzz.bin": bytes(300_000)}.items():
            zf.writestr(f"{TOP}/{name}", content)
    data = bytearray(archive.read_bytes())
    entry = data.rfind(b"PK\x01\x02")  # the last central directory entry: zzz.bin
    assert data[entry + 46 : entry + 46 + len(f"{TOP}/zzz.bin")] == f"{TOP}/zzz.bin".encode()
    struct.pack_into("<I", data, entry + 24, 10)  # uncompressed size
    archive.write_bytes(bytes(data))
    data_dir = tmp_path / "data"
    _user_data_dir(data_dir)
    before = _snapshot(data_dir)
    url = f"{base}/liar.zip"
    with pytest.raises(DataError, match="damaged") as info:
        fetch_dataset("wbc1", data_dir, url=url, progress=False, max_bytes=5_000)
    assert url in str(info.value)
    assert _snapshot(data_dir) == before


def test_download_over_the_limit_is_refused(server, fake_card, tmp_path):
    www, base = server
    (www / "huge.zip").write_bytes(bytes(50_000))
    data_dir = tmp_path / "data"
    _user_data_dir(data_dir)
    before = _snapshot(data_dir)
    url = f"{base}/huge.zip"
    with pytest.raises(DataError, match="larger than the limit") as info:
        fetch_dataset("wbc1", data_dir, url=url, progress=False, max_bytes=10_000)
    assert url in str(info.value)
    assert _snapshot(data_dir) == before


@pytest.mark.parametrize("content", ["not an archive", "corrupt zip", "unsafe member"])
def test_errors_name_the_url_never_a_temporary_file(server, fake_card, tmp_path, content):
    www, base = server
    path = www / "a.zip"
    if content == "not an archive":
        path.write_bytes(b"<html>not found</html>")
    elif content == "corrupt zip":
        _zip(path, {"big.bin": bytes(range(256)) * 400})
        data = bytearray(path.read_bytes())
        data[200:400] = b"\xff" * 200
        path.write_bytes(bytes(data))
    else:
        _zip_with(path, "../evil.txt")
    url = f"{base}/a.zip"
    with pytest.raises(DataError) as info:
        fetch_dataset("wbc1", tmp_path / "data", url=url, progress=False)
    message = str(info.value)
    assert url in message
    assert ".download-" not in message and ".extract-" not in message
    assert str(tmp_path / "data") not in message


# --------------------------------------------------------------------------- manifests


def test_verify_manifest_reports_missing_and_mismatched(tmp_path):
    manifest = _manifest(tmp_path / "m.sha256", FILES)
    root = tmp_path / "root"
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    assert verify_manifest(root, manifest) == []
    (root / "LICENSE").unlink()
    (root / "README.rst").write_bytes(b"changed")
    assert verify_manifest(root, manifest) == ["missing: LICENSE", "checksum mismatch: README.rst"]


def test_malformed_or_empty_manifest(tmp_path):
    (tmp_path / "bad.sha256").write_text("not a checksum line\n")
    with pytest.raises(DataError, match="bad.sha256"):
        verify_manifest(tmp_path, tmp_path / "bad.sha256")
    (tmp_path / "empty.sha256").write_text("\n")
    with pytest.raises(DataError, match="empty.sha256"):
        verify_manifest(tmp_path, tmp_path / "empty.sha256")


def test_committed_manifest_matches_the_real_data(wbc_dir):
    """This is what proves datasets/wbc1.sha256 is right: all 600 + 3 files verify."""
    manifest = card_file(load_card("wbc1")["manifest"])
    lines = manifest.read_text().splitlines()
    names = [line.split("  ", 1)[1] for line in lines]
    assert names == sorted(names)
    assert len(names) == 603
    assert sum(n.startswith("Dataset 1/") for n in names) == 600
    assert {"Class Labels of Dataset 1.csv", "LICENSE", "README.rst"} <= set(names)
    assert verify_manifest(wbc_dir, manifest) == []


def test_real_data_through_a_github_style_archive(server, wbc_dir, tmp_path):
    """End to end with the real card and manifest: a zip laid out like GitHub's archive."""
    www, base = server
    commit = load_card("wbc1")["commit"]
    with zipfile.ZipFile(www / f"{commit}.zip", "w") as zf:  # stored: quick to build
        for path in sorted(wbc_dir.rglob("*")):
            if path.is_file():
                rel = path.relative_to(wbc_dir).as_posix()
                zf.write(path, f"segmentation_WBC-{commit}/{rel}")
        zf.writestr(f"segmentation_WBC-{commit}/Dataset 2/001.bmp", b"not in the manifest")
    data_dir = tmp_path / "data"
    root = fetch_dataset("wbc1", data_dir, url=f"{base}/{commit}.zip", progress=False)
    assert root == data_dir / "segmentation_WBC"
    assert len(load_dataset("wbc1", data_dir)) == 300
