"""Atomic file writes: a reader never sees a half-written file.

Each writer writes a temporary file in the target's folder, flushes and fsyncs it, then renames it
over the target, which is atomic on POSIX file systems.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from pocketnas.errors import CheckpointError, PocketNasError


def ensure_parent(path: str | os.PathLike[str]) -> Path:
    """Return `path` as a Path after checking that its parent folder exists."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise PocketNasError(f"{target}: parent folder {parent} does not exist")
    return target


def umask_mode(mode: int) -> int:
    """Return `mode` (0o666 for files, 0o777 for folders) less the process umask.

    mkstemp and mkdtemp create paths that only their owner can read. Files renamed into place
    get this mode instead, the one `open` and `mkdir` would have given them.
    """
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file that replaces `path` only when the block ends without an error."""
    target = ensure_parent(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.chmod(tmp_name, umask_mode(0o666))
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: str | os.PathLike[str], obj: Any) -> None:
    """Save `obj` with `torch.save` to `path` atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike[str], mmap: bool = False) -> Any:
    """Load a checkpoint with `weights_only=True`, so that the file can run no code.

    With `mmap` the tensors of a zip-format checkpoint are mapped, not read, so looking at the
    shapes of many large checkpoints is cheap. Older formats are read in full.

    Raises:
        CheckpointError: the file is missing, truncated or contains objects other than tensors and
            plain containers.
    """
    target = Path(path)
    if not target.is_file():
        raise CheckpointError(f"{target}: checkpoint not found")
    try:
        with warnings.catch_warnings():
            # torch warns about unusual pickle protocols before failing, and the error covers it.
            warnings.simplefilter("ignore")
            if mmap:
                try:
                    return torch.load(target, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as exc:
                    if "mmap" not in str(exc):
                        raise
            return torch.load(target, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{target}: not a PyTorch checkpoint of tensors and plain containers "
            "(pocketnas loads checkpoints with weights_only=True, so other objects are rejected)"
        ) from None
    except Exception as exc:  # torch raises many types for damaged files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{target}: not a readable checkpoint; it may be truncated or damaged ({first_line})"
        ) from None
