"""Download a dataset archive, extract it safely and verify it against a checksum manifest.

Why so careful: the harness downloads third-party archives into the user's cache and then
reports numbers computed on their content. So

* fetch never deletes or changes anything it did not create. A complete, verified copy
  already in place is used as is; anything else already at the target
  (``<data dir>/segmentation_WBC``, or a ``Dataset 1/`` in the data dir itself) that does
  not verify is refused with a DataError naming it, before anything is downloaded;
* extraction refuses anything that could write outside the destination or smuggle in
  non-files: absolute paths, any ``..`` component, symbolic and hard links, device files
  and FIFOs (zip and tar, any compression); members that collide (a file and a folder of
  the same name, two members for one path, a member under a file member); and archives
  whose headers add up to more than :data:`MAX_UNPACKED_BYTES` or :data:`MAX_MEMBERS`.
  The whole archive is checked before a single byte is written, and the size limit is
  enforced again on the bytes actually written (a header can lie);
* the archive is downloaded and extracted into temporary entries inside the data dir
  (same disk, so the final rename is atomic), its single top-level folder (GitHub's
  ``segmentation_WBC-<commit>/``) is stripped, every file of the manifest
  (``datasets/<name>.sha256``, ``sha256sum`` format) is checked, and only then is the
  result renamed to the target, which must still be free. On any failure the temporary
  entries (fetch's own) are removed and nothing else is touched;
* error messages name the URL and the archive member, never a temporary file;
* files the manifest does not list (Dataset 2 of the real archive) are kept but not used.

Not ``pooch``, for these checks: ``pooch.retrieve`` verifies one hash of the archive, not
each extracted file against a manifest; its ``Unzip``/``Untar`` extract with no size or member
limit, ``Untar`` without the tar ``data`` filter before Python 3.12 (fatiando/pooch#543; we
support 3.10), and both extract beside the archive, not aside and renamed once verified.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import lzma
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
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from bench.data import card_file, load_card, resolve_data_dir
from bench.errors import ConfigError, DataError

if TYPE_CHECKING:
    from collections.abc import Callable
    from importlib.resources.abc import Traversable

_CHUNK = 1 << 20
_MANIFEST_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")

#: Most bytes an archive may unpack to (sum of its files), and most bytes downloaded.
#: The real wbc1 archive holds Dataset 1 (about 14 MB, the 603 files of
#: ``datasets/wbc1.sha256``) plus Dataset 2 (a few tens of MB): 1 GiB is ample for it and
#: still stops a zip bomb long before it fills a disk.
MAX_UNPACKED_BYTES = 1 << 30
#: Most members (files and folders) an archive may hold; the real one has under 2,000.
MAX_MEMBERS = 100_000

# What the archive libraries raise on a damaged or unsupported archive.
_CORRUPT = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    gzip.BadGzipFile,
    NotImplementedError,  # zip: unsupported compression method
    RuntimeError,  # zip: encrypted member
)


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _mib(n: int) -> str:
    return f"{n:,} bytes ({n / 2**20:.1f} MiB)"


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
        try:
            if not path.is_file():
                problems.append(f"missing: {rel}")
            elif sha256_file(path) != expected:
                problems.append(f"checksum mismatch: {rel}")
        except OSError as error:  # unreadable: a problem to report, not a crash
            problems.append(f"unreadable: {rel} ({error.strerror or error})")
    return problems


# --------------------------------------------------------------------------- extraction


class _Member(NamedTuple):
    """One archive member, checked and normalised; ``size`` is what its header declares."""

    name: str
    rel: PurePosixPath
    is_dir: bool
    size: int
    info: zipfile.ZipInfo | tarfile.TarInfo


def _check_name(label: str, name: str) -> PurePosixPath:
    """A member name as a safe relative path, or DataError naming archive and member."""
    if not name or "\x00" in name:
        raise DataError(f"archive {label}: member with an empty or invalid name: {name!r}")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified):
        raise DataError(f"archive {label}: refusing absolute path {name!r}")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DataError(f"archive {label}: refusing path with '..': {name!r}")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _too_many(label: str, max_members: int) -> DataError:
    return DataError(
        f"archive {label} holds more than {max_members:,} members; refusing to extract it "
        "(a damaged or malicious archive?)"
    )


def _zip_members(label: str, zf: zipfile.ZipFile, max_members: int) -> list[_Member]:
    infos = zf.infolist()
    if len(infos) > max_members:
        raise _too_many(label, max_members)
    members = []
    for info in infos:
        rel = _check_name(label, info.filename)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise DataError(f"archive {label}: refusing symbolic link {info.filename!r}")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise DataError(f"archive {label}: refusing special file {info.filename!r}")
        is_dir = info.is_dir()
        members.append(_Member(info.filename, rel, is_dir, 0 if is_dir else info.file_size, info))
    return members


def _tar_members(label: str, tf: tarfile.TarFile, max_members: int) -> list[_Member]:
    members = []
    for member in tf:  # iterate (not getmembers()) to stop early on a flood of headers
        if len(members) >= max_members:
            raise _too_many(label, max_members)
        rel = _check_name(label, member.name)
        if member.issym() or member.islnk():
            kind = "symbolic" if member.issym() else "hard"
            raise DataError(f"archive {label}: refusing {kind} link {member.name!r}")
        if member.isdev():
            raise DataError(f"archive {label}: refusing device file or FIFO {member.name!r}")
        if not (member.isfile() or member.isdir()):
            raise DataError(f"archive {label}: refusing unsupported member {member.name!r}")
        is_dir = member.isdir()
        members.append(_Member(member.name, rel, is_dir, 0 if is_dir else member.size, member))
    return members


def _check_layout(label: str, members: list[_Member], max_bytes: int) -> None:
    """Refuse colliding members and archives over the size limit, before writing a byte."""
    files: dict[PurePosixPath, str] = {}
    folders: dict[PurePosixPath, str] = {}  # explicit folders and every member's parents
    for member in members:
        if member.is_dir:
            folders.setdefault(member.rel, member.name)
        elif member.rel == PurePosixPath("."):
            raise DataError(f"archive {label}: file member {member.name!r} has no file name")
        elif member.rel in files:
            raise DataError(
                f"archive {label}: members {files[member.rel]!r} and {member.name!r} "
                "both land on the same file; refusing to extract it"
            )
        else:
            files[member.rel] = member.name
        for parent in member.rel.parents:
            if parent != PurePosixPath("."):
                folders.setdefault(parent, member.name)
    for rel, name in files.items():
        if rel in folders:
            raise DataError(
                f"archive {label}: {rel.as_posix()!r} is both a file (member {name!r}) and "
                f"a folder (member {folders[rel]!r}); refusing to extract it"
            )
    total = sum(member.size for member in members)
    if total > max_bytes:
        raise DataError(
            f"archive {label}: its files add up to {_mib(total)} uncompressed, more than "
            f"the limit of {_mib(max_bytes)}; refusing to extract it (a damaged or "
            "malicious archive?)"
        )


def _target(dest: Path, rel: PurePosixPath, label: str, name: str) -> Path:
    target = (dest / rel).resolve()
    if target != dest and dest not in target.parents:  # defence in depth
        raise DataError(f"archive {label}: member {name!r} would land outside the target folder")
    return target


def _make_folders(folder: Path, created: list[Path], label: str, name: str) -> None:
    """Create ``folder`` and its missing parents, recording each one made (to undo it)."""
    missing = []
    path = folder
    while not path.is_dir():
        if path.exists() or path.is_symlink():
            raise DataError(f"archive {label}: member {name!r} needs a folder where a file is")
        missing.append(path)
        path = path.parent
    for path in reversed(missing):
        path.mkdir()
        created.append(path)


def _copy_limited(
    src: IO[bytes], out: IO[bytes], member: _Member, label: str, written: int, max_bytes: int
) -> int:
    """Copy one member, counting what is really written; return the archive's running total.

    The header check already passed, but a header can lie: stop before writing a byte past
    the member's declared size or the archive's limit.
    """
    mine = 0
    for block in iter(lambda: src.read(_CHUNK), b""):
        mine += len(block)
        written += len(block)
        if mine > member.size:
            raise DataError(
                f"archive {label}: member {member.name!r} holds more data than its header "
                f"says ({_mib(member.size)}); refusing a damaged or malicious archive"
            )
        if written > max_bytes:
            raise DataError(
                f"archive {label}: member {member.name!r} takes the archive past the limit "
                f"of {_mib(max_bytes)} uncompressed; refusing to extract it"
            )
        out.write(block)
    return written


def _write_members(
    dest: Path,
    members: list[_Member],
    open_member: Callable[[_Member], IO[bytes]],
    label: str,
    max_bytes: int,
    created: list[Path],
) -> None:
    written = 0
    for member in members:
        target = _target(dest, member.rel, label, member.name)
        if member.is_dir:
            _make_folders(target, created, label, member.name)
            continue
        _make_folders(target.parent, created, label, member.name)
        try:
            with open(target, "xb") as out:  # "x": never overwrite what is already there
                created.append(target)
                with open_member(member) as src:
                    written = _copy_limited(src, out, member, label, written, max_bytes)
        except FileExistsError as error:
            raise DataError(
                f"archive {label}: member {member.name!r} would overwrite an existing "
                "entry (a name clash, e.g. on a case-insensitive disk); refusing"
            ) from error
        except _CORRUPT:
            raise
        except OSError as error:  # disk full, permissions: name the member, not the temp path
            raise DataError(
                f"cannot extract member {member.name!r} of archive {label}: "
                f"{error.strerror or error}"
            ) from error


def _remove_created(created: list[Path]) -> None:
    """Undo an extraction: only what it made, newest first; folders only when empty."""
    for path in reversed(created):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()


def safe_extract(
    archive: Path,
    dest: Path,
    *,
    label: str | None = None,
    max_bytes: int = MAX_UNPACKED_BYTES,
    max_members: int = MAX_MEMBERS,
) -> None:
    """Extract a zip or tar (plain/gz/bz2/xz) archive into ``dest`` after checking every member.

    Only regular files and folders are written, with default permissions; nothing from the
    archive decides where a file lands outside ``dest`` or what kind of file it is, and no
    existing file is overwritten. ``label`` names the archive in errors (fetch passes the
    URL: ``archive`` is a temporary file). ``max_bytes`` bounds the total uncompressed size
    (from the headers first, then on the bytes written) and ``max_members`` the member
    count. On any error, everything this call created is removed again.
    """
    archive = Path(archive)
    dest = Path(dest)
    label = label or str(archive)
    if dest.exists() and not dest.is_dir():
        raise DataError(f"cannot extract {label}: {dest} exists and is not a folder")
    created: list[Path] = []
    try:
        _extract(archive, dest, label, max_bytes, max_members, created)
    except BaseException:
        _remove_created(created)
        raise


def _extract(
    archive: Path,
    dest: Path,
    label: str,
    max_bytes: int,
    max_members: int,
    created: list[Path],
) -> None:
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = _zip_members(label, zf, max_members)
                _check_layout(label, members, max_bytes)
                _make_folders(dest.absolute(), created, label, ".")
                _write_members(
                    dest.resolve(), members, lambda m: zf.open(m.info), label, max_bytes, created
                )
            return
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf:
                members = _tar_members(label, tf, max_members)
                _check_layout(label, members, max_bytes)
                _make_folders(dest.absolute(), created, label, ".")

                def open_tar(member: _Member) -> IO[bytes]:
                    src = tf.extractfile(member.info)
                    if src is None:  # pragma: no cover - isfile() members always have data
                        raise DataError(f"archive {label}: cannot read member {member.name!r}")
                    return src

                _write_members(dest.resolve(), members, open_tar, label, max_bytes, created)
            return
    except _CORRUPT as error:
        raise DataError(f"archive {label} is damaged or unsupported: {error}") from error
    except DataError:
        raise
    except OSError as error:  # say so without the temporary path
        raise DataError(f"cannot extract archive {label}: {error.strerror or error}") from error
    raise DataError(f"{label} is neither a zip nor a tar archive")


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


def download(
    url: str,
    directory: Path,
    *,
    timeout: float = 60,
    progress: bool = True,
    max_bytes: int = MAX_UNPACKED_BYTES,
) -> Path:
    """Download ``url`` into a temporary file inside ``directory`` (same disk as the target).

    More than ``max_bytes`` is refused (an archive is not larger than what it unpacks to).
    The caller owns the returned file and deletes it.
    """
    fd, name = tempfile.mkstemp(dir=directory, prefix=".download-")
    path = Path(name)
    _say(progress, f"downloading {url}")
    too_big = DataError(
        f"cannot download {url}: it is larger than the limit of {_mib(max_bytes)}; "
        "refusing it (not the dataset archive?)"
    )
    try:
        with (
            os.fdopen(fd, "wb") as handle,
            urllib.request.urlopen(url, timeout=timeout) as response,
        ):
            total = int(response.headers.get("Content-Length") or 0)
            if total > max_bytes:
                raise too_big
            done = 0
            for block in iter(lambda: response.read(_CHUNK), b""):
                done += len(block)
                if done > max_bytes:
                    raise too_big
                handle.write(block)
                if progress and total:
                    print(f"\r  {done / 1e6:.1f} / {total / 1e6:.1f} MB", end="", file=sys.stderr)
        if progress and total:
            print(file=sys.stderr)
    except DataError:
        path.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, HTTPException, OSError, ValueError) as error:
        path.unlink(missing_ok=True)
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
        raise DataError(
            f"cannot download {url}: {reason}. Pass --url with a reachable copy of the "
            "archive (http(s):// or file://), or --data-dir pointing at a folder that "
            "already holds the data"
        ) from error
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------- fetch


def _refuse(name: str, path: Path, reason: str) -> DataError:
    return DataError(
        f"{name}: {path} already exists and is not a complete, verified copy of the data "
        f"({reason}). `bench data fetch` never deletes or changes what it did not create: "
        f"move {path} away (or delete it yourself) and run it again, or pass --data-dir "
        "with another folder"
    )


def _verification_reason(problems: list[str], manifest_name: str) -> str:
    shown = "; ".join(problems[:3])
    more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    return f"{len(problems)} problems against {manifest_name}: {shown}{more}"


def _existing(
    name: str, target: Path, subdir: str, manifest: Path | Traversable, card: dict[str, Any]
) -> Path | None:
    """``target`` if it is a verified copy, None if nothing is there; otherwise refuse."""
    if not (target.exists() or target.is_symlink()):
        return None
    if (target / subdir).is_dir():
        problems = verify_manifest(target, manifest)
        if not problems:
            return target
        reason = _verification_reason(problems, card["manifest"])
    elif not target.exists():
        reason = "it is a broken symbolic link"
    elif not target.is_dir():
        reason = "it is not a folder"
    else:
        reason = f"it has no '{subdir}/' folder"
    raise _refuse(name, target, reason)


def _move_into_place(src: Path, target: Path) -> None:
    """Rename ``src`` to ``target`` without ever replacing something that appeared meanwhile."""
    if os.name == "nt":  # Windows refuses an existing destination by itself
        os.rename(src, target)
        return
    # POSIX rename replaces an empty folder: claim the name first (mkdir is atomic and
    # fails if anything is there), so the rename only ever replaces our own empty folder.
    os.mkdir(target)
    try:
        os.rename(src, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(target)  # ours, and only if still empty
        raise


def _download_and_install(
    name: str,
    card: dict[str, Any],
    source: str,
    base: Path,
    target: Path,
    manifest: Path | Traversable,
    timeout: float,
    progress: bool,
    max_bytes: int,
    max_members: int,
) -> None:
    archive = workdir = None
    try:
        archive = download(source, base, timeout=timeout, progress=progress, max_bytes=max_bytes)
        workdir = Path(tempfile.mkdtemp(prefix=".extract-", dir=base))
        _say(progress, f"extracting {source}")
        safe_extract(
            archive, workdir / "x", label=source, max_bytes=max_bytes, max_members=max_members
        )
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
        try:
            _move_into_place(root, target)
        except FileExistsError as error:
            raise DataError(
                f"{name}: {target} appeared while fetching; it was left as it is and nothing "
                "was installed. Check what it is, move it away and run again"
            ) from error
        except OSError as error:
            raise DataError(
                f"{name}: cannot move the verified data into {target}: "
                f"{error.strerror or error}; nothing was installed"
            ) from error
    finally:
        # Fetch's own temporary entries, whatever happened; nothing else.
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        if archive is not None:
            archive.unlink(missing_ok=True)


def fetch_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    url: str | None = None,
    timeout: float = 60,
    progress: bool = True,
    max_bytes: int = MAX_UNPACKED_BYTES,
    max_members: int = MAX_MEMBERS,
) -> Path:
    """Make dataset ``name`` present and verified under the data dir; return its root folder.

    Already present and verified: nothing is downloaded. Something else already in the
    way (a folder that does not verify, a file): DataError naming it, nothing downloaded or
    changed. Otherwise the card's archive (or ``url``) is downloaded, extracted safely
    (``max_bytes``/``max_members`` bound it, see :func:`safe_extract`), verified, and
    renamed into place; on failure only fetch's own temporary entries are removed.
    """
    card = load_card(name)
    if "archive_url" not in card:
        raise ConfigError(f"dataset {name!r} is generated locally; there is nothing to fetch")
    manifest = card_file(card["manifest"])
    base = resolve_data_dir(data_dir)
    target = base / card["layout"]["folder"]
    subdir = card["layout"]["subdir"]

    # The data dir itself may hold the data (bench.data.wbc1_root reads it first), so a
    # broken copy there would shadow a fresh download: refuse it like one at the target.
    if (base / subdir).is_dir():
        problems = verify_manifest(base, manifest)
        if problems:
            raise _refuse(
                name,
                base / subdir,
                f"the data dir holds it, so it would be read instead of a download; "
                f"{_verification_reason(problems, card['manifest'])}",
            )
        _say(progress, f"{name}: already present and verified at {base}; not downloading")
        return base
    if _existing(name, target, subdir, manifest, card) is not None:
        _say(progress, f"{name}: already present and verified at {target}; not downloading")
        return target

    source = _normalise_url(url) if url else card["archive_url"]
    made_base = not base.exists()
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the data dir {base}: {error}") from error
    try:
        _download_and_install(
            name, card, source, base, target, manifest, timeout, progress, max_bytes, max_members
        )
    except BaseException:
        if made_base:
            with contextlib.suppress(OSError):
                base.rmdir()  # we made it; only if still empty
        raise
    _say(progress, f"{name}: verified {len(read_manifest(manifest))} files in {target}")
    return target
