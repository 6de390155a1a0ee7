"""Decoded-and-resized image cache: every image decoded once per size, kept as uint8 on disk (memory-mapped).

Epochs after the first, validation, prediction and the demo's examples then read arrays instead of decoding
PNG/JPEG again. The cache key covers each file's path, size and mtime and the target size, so a changed file
is decoded again. Unreadable files are recorded, reported once, and left out.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from zoo.data.io import ImageReadError, TruncatedImageWarning, examples, load_resized


def default_cache_dir() -> Path:
    return Path(os.environ.get("BONE_ZOO_CACHE", Path.home() / ".cache" / "bone-zoo")) / "images"


@dataclass
class ImageArray:
    """Images of a list of paths at one size: ``array[i]`` is uint8 (size, size); ``ok[i]`` False if unreadable."""

    paths: list[str]
    size: int
    array: np.ndarray
    ok: np.ndarray
    errors: dict[str, str]

    def index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}


def _key(paths: list[str], size: int) -> str:
    h = hashlib.sha1(f"v1|{size}".encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"|{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"|{os.path.abspath(p)}|missing".encode())
    return h.hexdigest()[:20]


def _decode_all(paths: list[str], size: int, out: np.ndarray, workers: int, quiet: bool) -> dict[str, str]:
    errors: dict[str, str] = {}
    truncated: list[str] = []

    def one(i: int) -> None:
        try:  # no warnings.catch_warnings here: it is not thread-safe and can swallow later warnings
            out[i], truncated_file = load_resized(paths[i], size)
            if truncated_file:
                truncated.append(paths[i])
        except ImageReadError as exc:
            errors[paths[i]] = str(exc)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for _ in tqdm(pool.map(one, range(len(paths))), total=len(paths), desc=f"decode {size}px", unit="img",
                      disable=quiet, leave=False):
            pass
    if truncated:
        warnings.warn(f"{len(truncated)} truncated image(s) read with Pillow's truncated mode (missing part is black):"
                      f" {examples(truncated)}", TruncatedImageWarning,
                      stacklevel=3)
    return errors


def _open_entry(data: Path, meta: Path, shape: tuple[int, int, int]) -> tuple[np.ndarray, dict[str, str]] | None:
    """A complete cache entry: (memory-mapped array, unreadable files); None (and the pieces removed) for a missing
    or damaged one, which is then decoded again. Complete = its metadata, written last, is there and the array has the
    expected shape."""
    if not (meta.is_file() and data.is_file()):
        return None
    try:
        errors = json.loads(meta.read_text())["errors"]
        arr = np.load(data, mmap_mode="r")
        if arr.shape == shape and arr.dtype == np.uint8:
            return arr, errors
    except (OSError, ValueError, KeyError, EOFError):
        pass
    data.unlink(missing_ok=True)
    meta.unlink(missing_ok=True)
    return None


def _remove_stale(folder: Path) -> None:
    """Temporary files of decoders that were killed (their process is gone)."""
    for tmp in folder.glob("*.tmp*"):
        try:
            pid = int(tmp.name.split(".")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue


def load_images(
    paths: list[str], size: int, cache_dir: str | Path | None = None, workers: int | None = None, quiet: bool = False
) -> ImageArray:
    """Decode (or reuse) ``paths`` at ``size``. ``cache_dir=None`` uses the default folder; ``""`` keeps it in RAM."""
    paths = [str(p) for p in paths]
    workers = workers or min(8, os.cpu_count() or 1)
    if cache_dir == "":
        arr = np.zeros((len(paths), size, size), dtype=np.uint8)
        errors = _decode_all(paths, size, arr, workers, quiet)
    else:
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        key = _key(paths, size)
        data, meta = folder / f"{key}.npy", folder / f"{key}.json"
        _remove_stale(folder)
        entry = _open_entry(data, meta, (len(paths), size, size))
        if entry is not None:
            arr, errors = entry
        else:
            tmp = folder / f"{key}.{os.getpid()}.tmp.npy"
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size))
            errors = _decode_all(paths, size, arr, workers, quiet)
            arr.flush()
            del arr
            os.replace(tmp, data)
            tmp_meta = meta.with_suffix(f".{os.getpid()}.tmp")
            tmp_meta.write_text(json.dumps({"size": size, "n": len(paths), "errors": errors}))
            os.replace(tmp_meta, meta)  # written last: marks the cache complete
            arr = np.load(data, mmap_mode="r")
    ok = np.array([p not in errors for p in paths], dtype=bool)
    return ImageArray(paths, size, arr, ok, errors)


def report_unreadable(errors: dict[str, str], what: str = "image") -> None:
    """One warning listing every unreadable file (they were skipped)."""
    if errors:
        listing = "\n  ".join(f"{msg}" for msg in list(errors.values())[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        warnings.warn(f"skipped {len(errors)} unreadable {what} file(s):\n  {listing}{more}", stacklevel=2)
