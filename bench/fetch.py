"""Download a dataset archive, extract it safely and verify it against a checksum manifest.

Why so careful: the harness downloads third-party archives into the user's cache and then
reports numbers computed on their content. So

* extraction refuses anything that could write outside the destination or smuggle in
  non-files: absolute paths, any ``..`` component, symbolic and hard links, device files
  and FIFOs (zip and tar, any compression). The whole archive is checked before a single
  byte is written;
* the archive is extracted into a temporary folder inside the data dir, its single
  top-level folder (GitHub's ``segmentation_WBC-<commit>/``) is stripped, every file of
  the manifest (``datasets/<name>.sha256``, ``sha256sum`` format) is checked, and only
  then is the result renamed to ``<data dir>/segmentation_WBC``. A checksum failure removes
  the extracted folder and raises a DataError listing the failing files, so a bad download
  never sits where :func:`bench.data.load_dataset` would read it;
* files the manifest does not list (Dataset 2 of the real archive) are kept but not used.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from bench.data import card_file, load_card, resolve_data_dir
from bench.errors import ConfigError, DataError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

_CHUNK = 1 << 20
_MANIFEST_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- manifest


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(manifest: Path | Traversable) -> list[tuple[str, str]]:
    """``(hex digest, relative path)`` entries of a ``sha256sum``-format manifest."""
    try:
        text = manifest.read_text(encoding="utf-8")
    except OSError as error:
        raise DataError(f"cannot read checksum manifest {manifest}: {error}") from error
    entries = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _MANIFEST_LINE.fullmatch(line)
        if not match:
            raise DataError(f"{manifest}:{lineno}: not a '<sha256>  <path>' line: {line!r}")
        entries.append((match[1].lower(), match[2]))
    if not entries:
        raise DataError(f"checksum manifest {manifest} lists no files")
    return entries


def verify_manifest(root: Path, manifest: Path | Traversable) -> list[str]:
    """Check every manifest entry under ``root``; return the problems (empty list: all good)."""
    root = Path(root)
    problems = []
    for expected, rel in read_manifest(manifest):
        parts = PurePosixPath(rel).parts
        if rel.startswith("/") or ".." in parts:
            problems.append(f"unsafe path in manifest: {rel}")
            continue
        path = root.joinpath(*parts)
        if not path.is_file():
            problems.append(f"missing: {rel}")
        elif sha256_file(path) != expected:
            problems.append(f"checksum mismatch: {rel}")
    return problems


# --------------------------------------------------------------------------- extraction


def _check_name(archive: Path, name: str) -> PurePosixPath:
    """A member name as a safe relative path, or DataError naming archive and member."""
    if not name or "\x00" in name:
        raise DataError(f"archive {archive}: member with an empty or invalid name: {name!r}")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified):
        raise DataError(f"archive {archive}: refusing absolute path {name!r}")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DataError(f"archive {archive}: refusing path with '..': {name!r}")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _target(dest: Path, rel: PurePosixPath, archive: Path, name: str) -> Path:
    target = (dest / rel).resolve()
    if target != dest and dest not in target.parents:  # defence in depth
        raise DataError(f"archive {archive}: member {name!r} would land outside {dest}")
    return target


def _zip_members(archive: Path, zf: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    members = []
    for info in zf.infolist():
        rel = _check_name(archive, info.filename)
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise DataError(f"archive {archive}: refusing symbolic link {info.filename!r}")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise DataError(f"archive {archive}: refusing special file {info.filename!r}")
        members.append((info, rel))
    return members


def _tar_members(archive: Path, tf: tarfile.TarFile) -> list[tuple[tarfile.TarInfo, PurePosixPath]]:
    members = []
    for member in tf.getmembers():
        rel = _check_name(archive, member.name)
        if member.issym() or member.islnk():
            kind = "symbolic" if member.issym() else "hard"
            raise DataError(f"archive {archive}: refusing {kind} link {member.name!r}")
        if member.isdev():
            raise DataError(f"archive {archive}: refusing device file or FIFO {member.name!r}")
        if not (member.isfile() or member.isdir()):
            raise DataError(f"archive {archive}: refusing unsupported member {member.name!r}")
        members.append((member, rel))
    return members


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a zip or tar (plain/gz/bz2/xz) archive into ``dest`` after checking every member.

    Only regular files and folders are written, with default permissions; nothing from the
    archive decides where a file lands outside ``dest`` or what kind of file it is.
    """
    archive = Path(archive)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info, rel in _zip_members(archive, zf):
                    target = _target(dest, rel, archive, info.filename)
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
            return
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf:
                for member, rel in _tar_members(archive, tf):
                    target = _target(dest, rel, archive, member.name)
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(member)
                    if src is None:  # pragma: no cover - isfile() members always have data
                        raise DataError(f"archive {archive}: cannot read member {member.name!r}")
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
            return
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as error:
        raise DataError(f"archive {archive} is corrupt: {error}") from error
    raise DataError(f"{archive} is neither a zip nor a tar archive")


def _single_top_folder(folder: Path) -> Path:
    """GitHub archives wrap everything in ``<repo>-<commit>/``: use that folder as the root."""
    entries = list(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


# --------------------------------------------------------------------------- download


def _normalise_url(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("http", "https", "file"):
        return url
    if not parsed.scheme or len(parsed.scheme) == 1:  # a local path (or C:\ on Windows)
        path = Path(url).expanduser()
        if path.exists():
            return path.resolve().as_uri()
    raise ConfigError(f"--url {url!r}: expected an http(s):// or file:// URL, or a local file")


def download(url: str, directory: Path, *, timeout: float = 60, progress: bool = True) -> Path:
    """Download ``url`` into a temporary file inside ``directory`` (same disk as the target)."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".download-")
    path = Path(name)
    _say(progress, f"downloading {url}")
    try:
        with (
            os.fdopen(fd, "wb") as handle,
            urllib.request.urlopen(url, timeout=timeout) as response,
        ):
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            for block in iter(lambda: response.read(_CHUNK), b""):
                handle.write(block)
                done += len(block)
                if progress and total:
                    print(f"\r  {done / 1e6:.1f} / {total / 1e6:.1f} MB", end="", file=sys.stderr)
        if progress and total:
            print(file=sys.stderr)
    except (urllib.error.URLError, HTTPException, OSError, ValueError) as error:
        path.unlink(missing_ok=True)
        reason = getattr(error, "reason", None) or error
        raise DataError(
            f"cannot download {url}: {reason}. Pass --url with a reachable copy of the "
            "archive (http(s):// or file://), or --data-dir pointing at a folder that "
            "already holds the data"
        ) from error
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def fetch_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    url: str | None = None,
    timeout: float = 60,
    progress: bool = True,
) -> Path:
    """Make dataset ``name`` present and verified under the data dir; return its root folder.

    Already present and verified: nothing is downloaded. Otherwise the card's archive (or
    ``url``) is downloaded, extracted safely, verified, and renamed into place.
    """
    card = load_card(name)
    if "archive_url" not in card:
        raise ConfigError(f"dataset {name!r} is generated locally; there is nothing to fetch")
    manifest = card_file(card["manifest"])
    base = resolve_data_dir(data_dir)
    target = base / card["layout"]["folder"]
    subdir = card["layout"]["subdir"]

    for root in (base, target):
        if (root / subdir).is_dir():
            problems = verify_manifest(root, manifest)
            if not problems:
                _say(progress, f"{name}: already present and verified at {root}; not downloading")
                return root
            _say(
                progress,
                f"{name}: {root} fails verification ({len(problems)} problems, e.g. "
                f"{problems[0]}); downloading again",
            )

    source = _normalise_url(url) if url else card["archive_url"]
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the data dir {base}: {error}") from error
    archive = download(source, base, timeout=timeout, progress=progress)
    workdir = Path(tempfile.mkdtemp(prefix=".extract-", dir=base))
    try:
        _say(progress, f"extracting into {base}")
        safe_extract(archive, workdir / "x")
        root = _single_top_folder(workdir / "x")
        problems = verify_manifest(root, manifest)
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise DataError(
                f"{name}: the archive from {source} fails verification against "
                f"{card['manifest']} ({len(problems)} problems); nothing was installed:\n  "
                f"{shown}{more}"
            )
        old = workdir / "previous"
        if target.exists() or target.is_symlink():
            target.rename(old)
        try:
            root.rename(target)
        except OSError as error:
            if old.exists():
                old.rename(target)
            raise DataError(f"cannot move the verified data into {target}: {error}") from error
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        archive.unlink(missing_ok=True)
    _say(progress, f"{name}: verified {len(read_manifest(manifest))} files in {target}")
    return target
