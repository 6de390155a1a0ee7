"""One way to write a file: to a temporary name beside it, then an atomic rename.

A reader (or a run killed half-way, or a power loss: the file and its folder are fsync'ed around the rename) sees
either the old complete file or the new complete one, never a torn or empty one.
Every file the project writes (members, checkpoints, CSVs, reports, cards, plots, leaderboards) goes through here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_path(path: str | Path) -> None:
    """Flush a file's data (or a folder's entries) to the disk. Folders: where the platform allows it (POSIX)."""
    path = Path(path)
    if path.is_dir() and os.name == "nt":  # pragma: no cover - Windows cannot open a folder to fsync it
        return
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():  # some file systems refuse fsync on a folder; a file must be flushed
            raise
    finally:
        os.close(fd)


def durable_replace(tmp: str | Path, path: str | Path) -> None:
    """``os.replace(tmp, path)`` that survives a power loss: the file is flushed before the rename and its folder
    after it, so no reader ever finds a complete-looking name with empty or partial content. A folder ``tmp`` (a
    checkpoint epoch): each file in it is flushed first, then the folder."""
    if Path(tmp).is_dir():
        for f in sorted(Path(tmp).rglob("*")):
            if f.is_file():
                fsync_path(f)
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(Path(path).parent)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder (same suffix, so libraries infer the format); on success it is
    renamed over ``path``; on error it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        durable_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def save_figure(fig, path: str | Path) -> Path:
    """A matplotlib Figure saved atomically (format from ``path``'s suffix)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)


def write_csv(df, path: str | Path, **kwargs) -> Path:
    """A pandas DataFrame as CSV, atomically (``index=False`` unless given)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kwargs)
    return Path(path)
