"""Atomic file writes: the one routine every file Accrete replaces in place goes through.

A reader (a serving job, `accrete status`, the next nightly) must see either the old file or the new one, never
a torn one, and a crash must not leave the old one damaged. So a file is written next to its destination under
a hidden temporary name, flushed to disk, renamed over the destination (atomic on POSIX), and the directory is
flushed so the rename itself survives a power cut. A failed write removes its temporary file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable

import pyarrow as pa
import pyarrow.parquet as pq


def fsync_file(path: Path) -> None:
    """Flush a written file's contents to disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_path(path: Path) -> Path:
    """The hidden name a file is written under before its rename: same directory, so the rename is atomic."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write `path` through `write(handle)` so that readers see the old file or the new one, nothing between.

    Raises OSError (the temporary file removed) when the file cannot be written; the old file is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_parquet_atomically(table: pa.Table, path: str | Path) -> Path:
    """`write_atomically` for one Parquet table (its schema metadata included)."""
    return write_atomically(path, lambda handle: pq.write_table(table, handle))


def write_text_atomically(path: str | Path, text: str) -> Path:
    """`write_atomically` for a UTF-8 text file (a pointer, a page, a JSON document)."""
    return write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))
