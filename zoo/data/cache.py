"""Decoded-and-resized image cache: every image decoded once per size, kept as uint8 on disk (memory-mapped).

Epochs after the first, validation, prediction and the demo's examples then read arrays instead of decoding
PNG/JPEG again. An entry's key is the *set* of files (each one's absolute path, size and mtime) and the target size,
not their order: another seed, fold or ``--val-fraction`` reorders the same files and reuses the entry, rows coming
back in the caller's order. Unreadable files are recorded, reported once, and left out.

A cache a shared machine can live with: at most ``max_gb`` (``--cache-max-gb``, ``BONE_ZOO_CACHE_MAX_GB``, default
20) on disk, least recently used entries evicted first, never one in use (each process using an entry holds a use
record naming its host, PID and a per-process nonce until its arrays are released); temporary files name them too.
Whether an owner lives is asked of its lock file (``HOST.PID.NONCE.lock``, flock'ed for the owner's life: right
across containers that share a host name and PIDs); where flock cannot tell, a same-host PID or a day untouched
decides. Orphaned arrays (a crash between the two renames) are reaped. A set bigger than the bound is decoded into
a temporary memory-mapped file in the cache folder, removed when its arrays are released.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import mmap
import os
import re
import socket
import time
import uuid
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from zoo.atomic import durable_replace
from zoo.data.io import ImageReadError, TruncatedImageWarning, examples, load_resized

DEFAULT_CACHE_MAX_GB = 20.0
STALE_SECONDS = 24 * 3600  # a temporary file untouched this long is abandoned, whoever wrote it (decoders write on)
USE_STALE_SECONDS = 7 * 24 * 3600  # a foreign host's use record older than this is abandoned
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def default_cache_dir() -> Path:
    return Path(os.environ.get("BONE_ZOO_CACHE", Path.home() / ".cache" / "bone-zoo")) / "images"


def cache_max_bytes(max_gb: float | None = None) -> int:
    """The on-disk bound: ``max_gb``, else ``BONE_ZOO_CACHE_MAX_GB``, else :data:`DEFAULT_CACHE_MAX_GB` (GB = 1e9)."""
    gb = max_gb if max_gb is not None else float(os.environ.get("BONE_ZOO_CACHE_MAX_GB", DEFAULT_CACHE_MAX_GB))
    return int(gb * 1e9)


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

    def read(self, idx) -> np.ndarray:
        """Row ``idx`` (an int) or rows (a sequence of ints) as an in-memory copy. Rows of a cache file are read
        with ``pread``, not through its memory map: pages touched through a map stay in the process's resident
        memory while it is mapped, so an epoch over a large cache entry would grow RSS with the dataset; read this
        way they live in the page cache only (shared, evictable) and RSS stays flat.

        Every kind of index means what it means to a numpy array of the rows (negative ints count from the end, a
        boolean mask selects, out of range raises IndexError), whether the rows are stored in the caller's order
        or not (:class:`RowView`) and however they are read."""
        rows = np.arange(len(self.paths))[idx]  # numpy's meaning of idx, in the caller's row numbers
        data, order = (self.array.data, self.array.order) if isinstance(self.array, RowView) else (self.array, None)
        if not _whole_file_map(data):
            return np.array(self.array[rows])
        scalar = np.ndim(rows) == 0
        rows = np.atleast_1d(rows)
        stored = rows if order is None else order[rows]
        row_bytes = data.shape[1] * data.shape[2]
        out = np.empty((len(stored), *data.shape[1:]), dtype=np.uint8)
        fd = os.open(data.filename, os.O_RDONLY)
        try:
            for j, r in enumerate(stored):
                if r < 0 or r >= data.shape[0]:
                    raise IndexError(f"row {r} out of range for {data.shape[0]} images")
                buf = os.pread(fd, row_bytes, data.offset + int(r) * row_bytes)
                if len(buf) != row_bytes:
                    raise OSError(f"{data.filename}: short read at row {r} (truncated cache entry)")
                out[j] = np.frombuffer(buf, dtype=np.uint8).reshape(data.shape[1:])
        finally:
            os.close(fd)
        return out[0] if scalar else out


def _whole_file_map(data) -> bool:
    """``data`` is the whole of a memory-mapped array file, rows from ``data.offset`` on (a slice of a memmap keeps
    the file's offset, not its own: it is read through the map instead)."""
    if not (isinstance(data, np.memmap) and data.filename and data.ndim == 3 and data.flags.c_contiguous
            and getattr(data, "_mmap", None) is not None):
        return False
    start = data.offset - data.offset % mmap.ALLOCATIONGRANULARITY  # where numpy's map of the file begins
    base = np.frombuffer(data._mmap, dtype=np.uint8).ctypes.data
    return data.ctypes.data - base == data.offset - start


class RowView:
    """The rows of a cache entry (stored in its own order) in the caller's order, read from the memory map on access:
    ``view[i]``, ``view[list]``, ``view[a:b]``, ``view[i, y, x]``; ``np.asarray(view)`` reads them all."""

    def __init__(self, data: np.ndarray, order: np.ndarray) -> None:
        self.data, self.order = data, order
        self.shape, self.dtype, self.ndim = (len(order), *data.shape[1:]), data.dtype, data.ndim

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, idx):
        if isinstance(idx, tuple):
            rows = self[idx[0]]
            return rows[idx[1:]] if np.ndim(idx[0]) == 0 and not isinstance(idx[0], slice) else \
                rows[(slice(None), *idx[1:])]
        return self.data[self.order[idx]]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.asarray(self.data[self.order])
        return out.astype(dtype) if dtype is not None else out

    def astype(self, dtype) -> np.ndarray:
        return np.asarray(self).astype(dtype)


def hash_files(h, paths: list[str]) -> None:
    """Update hash ``h`` with each file's path, size and mtime, in order (``|PATH|missing`` for one that is gone):
    what says the files are the ones seen before."""
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"|{p}|{st.st_size}|{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"|{p}|missing".encode())


def _key(files: list[str], size: int) -> str:
    """From the sorted set of absolute paths with their size and mtime, and the target size: order does not count."""
    h = hashlib.sha1(f"v2|{size}".encode())
    hash_files(h, files)
    return h.hexdigest()[:20]


class _RowWriter:
    """``writer[i] = image``: row ``i`` of a memory-mapped .npy file written with ``pwrite``, not through the map
    (whose dirty pages would stay in the process's resident memory: decoding a large set would grow RSS with it)."""

    def __init__(self, arr: np.memmap):
        self.offset, self.shape = arr.offset, arr.shape[1:]
        self.row_bytes = int(np.prod(self.shape))
        self.fd = os.open(arr.filename, os.O_WRONLY)

    def __setitem__(self, i: int, image: np.ndarray) -> None:
        data = np.ascontiguousarray(image, dtype=np.uint8)
        if data.shape != self.shape:
            raise ValueError(f"row of shape {data.shape}, expected {self.shape}")
        os.pwrite(self.fd, data.tobytes(), self.offset + int(i) * self.row_bytes)

    def close(self) -> None:
        os.close(self.fd)


def _decode_all(paths: list[str], size: int, out: np.ndarray, workers: int, quiet: bool) -> dict[str, str]:
    errors: dict[str, str] = {}
    truncated: list[str] = []
    target = _RowWriter(out) if isinstance(out, np.memmap) and out.filename else out

    def one(i: int) -> None:
        try:  # no warnings.catch_warnings here: it is not thread-safe and can swallow later warnings
            target[i], truncated_file = load_resized(paths[i], size)
            if truncated_file:
                truncated.append(paths[i])
        except ImageReadError as exc:
            errors[paths[i]] = str(exc)

    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for _ in tqdm(pool.map(one, range(len(paths))), total=len(paths), desc=f"decode {size}px", unit="img",
                          disable=quiet, leave=False):
                pass
    finally:
        if target is not out:
            target.close()
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
            os.utime(meta)  # last use: what least-recently-used eviction orders by
            return arr, errors
    except (OSError, ValueError, KeyError, EOFError):
        pass
    data.unlink(missing_ok=True)
    meta.unlink(missing_ok=True)
    return None


# -- owners: temporary files and use records name their host, PID and a per-process nonce --------------------------
_USE_NONCE = uuid.uuid4().hex[:8]  # one per interpreter: a recycled PID (or a PID in another container) is not it
_LOCKS: dict[Path, int] = {}  # folder -> this process's lock file descriptor, held (flock) until the process ends


def _hold_lock(folder: Path) -> None:
    """``HOST.PID.NONCE.lock`` in ``folder``, flock'ed for this process's life: what others ask to know it lives.
    Locked under a temporary name, then renamed, so no one finds it unlocked."""
    if folder in _LOCKS:
        return
    name = f"{HOST}.{os.getpid()}.{_USE_NONCE}.lock"
    tmp = folder / f".{name}.{uuid.uuid4().hex[:8]}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, folder / name)
    except OSError:  # a file system without flock: liveness falls back to PID and age
        os.close(fd)
        tmp.unlink(missing_ok=True)
        return
    _LOCKS[folder] = fd


def _lock_alive(lock: Path) -> bool | None:
    """True: its owner holds the flock (alive, whatever its host or PID); False: no lock file, or nobody holds it
    (the owner is gone); None: cannot tell (no flock on this file system)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # and with it the lock, had we taken it
    return False


def _owner_gone(path: Path, host: str, pid: str, max_age: float, age_on_this_host: bool,
                nonce: str | None = None) -> bool:
    """Abandoned. With a ``nonce`` (names written since the per-process lock): the owner's lock file says, by flock,
    whatever the host or PID (containers may share both). Otherwise (or where flock cannot tell): written on this host
    by a process that is gone, or untouched for ``max_age`` seconds (a foreign host always; this host only with
    ``age_on_this_host``, for files that their live owner keeps writing)."""
    if nonce is not None:
        alive = _lock_alive(path.parent / f"{host}.{pid}.{nonce}.lock")
        if alive is not None:
            return not alive
    try:
        old = time.time() - path.stat().st_mtime > max_age
    except OSError:
        return False
    if host != HOST or old and age_on_this_host:
        return old
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError, OSError):
        return False
    return False


def _remove_stale(folder: Path) -> None:
    """Temporary files (``KEY.HOST.PID.NONCE.tmp.*``; older ``KEY.HOST.PID.tmp.*``), use records
    (``KEY.HOST.PID.NONCE.ID.use``) and lock files (``HOST.PID.NONCE.lock``) whose owner is gone."""
    for f in folder.glob("*.tmp.*"):
        parts = f.name.split(".")
        if len(parts) == 6 and _owner_gone(f, parts[1], parts[2], STALE_SECONDS, True, parts[3]) or \
                len(parts) == 5 and _owner_gone(f, parts[1], parts[2], STALE_SECONDS, True):
            f.unlink(missing_ok=True)
    for f in folder.glob("*.use"):
        if _use_gone(f):
            f.unlink(missing_ok=True)
    for f in folder.glob("*.lock"):
        if _lock_alive(f) is False:
            f.unlink(missing_ok=True)


def _use_record(folder: Path, key: str) -> Path:
    """``KEY.HOST.PID.NONCE.ID.use``: this process is about to use entry ``key`` (made before it is opened)."""
    record = folder / f"{key}.{HOST}.{os.getpid()}.{_USE_NONCE}.{uuid.uuid4().hex[:8]}.use"
    record.touch()
    return record


def _release(record: Path, pid: int) -> None:
    if os.getpid() == pid:  # not from a forked DataLoader worker that drops its copy
        record.unlink(missing_ok=True)


def _use_gone(record: Path) -> bool:
    parts = record.name.split(".")
    return len(parts) != 6 or _owner_gone(record, parts[1], parts[2], USE_STALE_SECONDS, False, parts[3])


def _in_use(folder: Path, key: str) -> bool:
    return any(not _use_gone(f) for f in folder.glob(f"{key}.*.use"))


def evict(folder: str | Path, max_bytes: int, keep: str | None = None) -> int:
    """Remove least recently used complete entries until the folder's entries and temporary files total at most
    ``max_bytes``; entries in use (a live use record) and ``keep`` stay. Returns the bytes left."""
    folder = Path(folder)
    entries, total = [], 0
    for data in folder.glob("*.npy"):  # KEY.npy without KEY.json: a crash between the two renames
        key = data.name.split(".")[0]
        if data.name != f"{key}.npy" or (folder / f"{key}.json").exists():
            continue
        if key == keep or _in_use(folder, key):  # its writer, between the renames: counted
            try:
                total += data.stat().st_size
            except OSError:
                pass
        else:
            data.unlink(missing_ok=True)  # never complete, never to be read: reaped
    for meta in folder.glob("*.json"):
        key = meta.name.split(".")[0]
        if meta.name != f"{key}.json":  # a temporary KEY.HOST.PID.NONCE.tmp.json, counted below
            continue
        data = folder / f"{key}.npy"
        try:
            nbytes = meta.stat().st_size + (data.stat().st_size if data.is_file() else 0)
            entries.append((meta.stat().st_mtime, key, nbytes))
        except OSError:
            continue
        total += nbytes
    for tmp in folder.glob("*.tmp.*"):
        try:
            total += tmp.stat().st_size
        except OSError:
            continue
    for _, key, nbytes in sorted(entries):
        if total <= max_bytes:
            break
        if key == keep or _in_use(folder, key):
            continue
        (folder / f"{key}.json").unlink(missing_ok=True)  # the marker first: readers see no entry, never a torn one
        (folder / f"{key}.npy").unlink(missing_ok=True)
        total -= nbytes
    return total


def _entry_bytes(n: int, size: int) -> int:
    return n * size * size + 1024  # the .npy payload, its header and (most) metadata


def load_images(
    paths: list[str], size: int, cache_dir: str | Path | None = None, workers: int | None = None, quiet: bool = False,
    max_gb: float | None = None,
) -> ImageArray:
    """Decode (or reuse) ``paths`` at ``size``. ``cache_dir=None`` uses the default folder; ``""`` keeps it in RAM.
    ``max_gb`` bounds the cache folder (:func:`cache_max_bytes`); a set bigger than the bound is decoded into a
    temporary memory-mapped file in the cache folder (not RAM), removed when its arrays are released."""
    paths = [str(p) for p in paths]
    workers = workers or min(8, os.cpu_count() or 1)
    absolute = [os.path.abspath(p) for p in paths]
    files = sorted(set(absolute))
    bound = cache_max_bytes(max_gb)
    if cache_dir != "" and _entry_bytes(len(files), size) > bound:
        warnings.warn(f"{len(files)} images at {size}px need {_entry_bytes(len(files), size) / 1e9:.1f} GB, over the "
                      f"{bound / 1e9:g} GB cache bound: decoded into a temporary file, not cached "
                      f"(raise --cache-max-gb)",
                      stacklevel=2)
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        _hold_lock(folder)
        tmp = folder / f"uncached-{uuid.uuid4().hex[:12]}.{HOST}.{os.getpid()}.{_USE_NONCE}.tmp.raw"
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size))
        weakref.finalize(arr, _release, tmp, os.getpid())  # removed with the last view of it (a crash: reaped)
        errors = _decode_all(paths, size, arr, workers, quiet)
        ok = np.array([p not in errors for p in paths], dtype=bool)
        return ImageArray(paths, size, arr, ok, errors)
    if cache_dir == "":
        arr = np.zeros((len(paths), size, size), dtype=np.uint8)
        errors = _decode_all(paths, size, arr, workers, quiet)
        ok = np.array([p not in errors for p in paths], dtype=bool)
        return ImageArray(paths, size, arr, ok, errors)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    key = _key(files, size)
    _hold_lock(folder)
    _remove_stale(folder)
    record = _use_record(folder, key)
    try:
        stored, errors = _open_or_decode(folder, key, files, size, bound, workers, quiet)
    except BaseException:
        record.unlink(missing_ok=True)
        raise
    weakref.finalize(stored, _release, record, os.getpid())  # in use while any view of it lives here
    for mine in folder.glob(f"*.{HOST}.{os.getpid()}.{_USE_NONCE}.*.use"):
        mine.touch()  # what this process still holds, seen as alive from other hosts
    evict(folder, bound, keep=key)
    row = {p: i for i, p in enumerate(files)}
    order = np.array([row[p] for p in absolute], dtype=np.int64)
    array = stored if np.array_equal(order, np.arange(len(files))) else RowView(stored, order)
    errors = {p: errors[a] for p, a in zip(paths, absolute) if a in errors}
    ok = np.array([p not in errors for p in paths], dtype=bool)
    return ImageArray(paths, size, array, ok, errors)


def _open_or_decode(folder: Path, key: str, files: list[str], size: int, bound: int, workers: int,
                    quiet: bool) -> tuple[np.ndarray, dict[str, str]]:
    """The entry for ``files`` (sorted absolute paths) at ``size``: reused, or decoded and written (durably, the
    metadata last) after evicting enough to stay within ``bound``."""
    data, meta = folder / f"{key}.npy", folder / f"{key}.json"
    entry = _open_entry(data, meta, (len(files), size, size))
    if entry is None:
        evict(folder, bound - _entry_bytes(len(files), size))  # room first: the bound holds while it is written
        owner = f"{HOST}.{os.getpid()}.{_USE_NONCE}"
        tmp = folder / f"{key}.{owner}.tmp.npy"
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), size, size))
        errors = _decode_all(files, size, arr, workers, quiet)
        arr.flush()
        del arr
        durable_replace(tmp, data)
        tmp_meta = folder / f"{key}.{owner}.tmp.json"
        tmp_meta.write_text(json.dumps({"size": size, "n": len(files), "errors": errors}))
        durable_replace(tmp_meta, meta)  # written last: marks the entry complete
        entry = np.load(data, mmap_mode="r"), errors
    return entry


def report_unreadable(errors: dict[str, str], what: str = "image") -> None:
    """One warning listing every unreadable file (they were skipped)."""
    if errors:
        listing = "\n  ".join(f"{msg}" for msg in list(errors.values())[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        warnings.warn(f"skipped {len(errors)} unreadable {what} file(s):\n  {listing}{more}", stacklevel=2)
