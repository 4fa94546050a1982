"""Atomic file writes: a temporary name in the same folder, fsync, then a rename.

A crash at any moment leaves either the old or the new file, never half of one. The
temporaries are named ``.<name>.<8 random characters>.tmp`` (:data:`TEMPORARY_NAME`), so
a run directory can recognise and remove the ones a killed process left behind.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

#: The names :func:`atomic_write_bytes` gives its temporaries (mkstemp's 8 random chars).
TEMPORARY_NAME = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_png(path: Path, array: np.ndarray) -> None:
    """Encode a uint8 grey (H, W) or RGB (H, W, 3) array as PNG and write it atomically."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` through :func:`atomic_write_bytes` (checkpoints, resume states)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())
