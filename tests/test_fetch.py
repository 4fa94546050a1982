"""Download, safe extraction and manifest verification, against a loopback HTTP server."""

from __future__ import annotations

import functools
import hashlib
import io
import stat
import tarfile
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import bench.fetch
from bench.data import card_file, load_card, load_dataset
from bench.errors import ConfigError, DataError
from bench.fetch import fetch_dataset, safe_extract, verify_manifest

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


@pytest.fixture
def server(tmp_path):
    """Serve ``tmp_path / "www"`` on 127.0.0.1; yields ``(folder, base_url)``."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(www))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
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
    """Temporary downloads or extraction folders left in the data dir."""
    return sorted(p.name for p in data_dir.iterdir() if p.name.startswith("."))


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


def test_checksum_failure_removes_the_folder_and_names_the_file(server, fake_card, tmp_path):
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


def test_bad_existing_folder_is_replaced(server, fake_card, tmp_path):
    www, base = server
    _zip(www / "a.zip", FILES)
    stale = tmp_path / "data" / "segmentation_WBC" / "Dataset 1"
    stale.mkdir(parents=True)
    (stale / "001.bmp").write_bytes(b"stale")
    root = fetch_dataset("wbc1", tmp_path / "data", url=f"{base}/a.zip", progress=False)
    assert (root / "Dataset 1" / "001.bmp").read_bytes() == FILES["Dataset 1/001.bmp"]
    assert _leftovers(tmp_path / "data") == []


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
