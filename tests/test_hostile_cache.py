"""The image cache under a hostile review (issue 19, second round): an over-bound set goes to a temporary file, not
RAM; liveness by a held flock, not a PID (containers share host names and PIDs); orphaned arrays are reaped."""

from __future__ import annotations

import fcntl
import gc
import os
import subprocess
import sys

import numpy as np
import pytest

import zoo.data.cache as cache
from tests.test_cache import _images
from zoo.data import load_images

DEAD = 2**22 + 12345  # above the usual pid_max: no such process here


def test_a_set_bigger_than_the_bound_is_decoded_into_a_temporary_memmap_removed_on_release(tmp_path):
    paths = _images(tmp_path / "img", 3)
    folder = tmp_path / "cache"
    with pytest.warns(UserWarning, match="decoded into a temporary file"):
        arr = load_images(paths, 32, folder, quiet=True, max_gb=1e-6)
    assert isinstance(arr.array, np.memmap), type(arr.array)  # on disk, not in RAM
    temps = list(folder.glob("uncached-*.tmp.*"))
    assert len(temps) == 1 and temps[0].stat().st_size >= 3 * 32 * 32
    assert arr.ok.all() and arr.array[0].max() > 0
    del arr
    gc.collect()
    assert not list(folder.glob("uncached-*"))


def test_a_live_owner_holding_its_flock_is_not_reaped_whatever_its_pid(tmp_path):
    """Another container: same host name, a PID that is 'dead' here, but its lock file is flock'ed by a live
    process. Its temp file stays and its use record keeps its entry from eviction; once the lock is free both go."""
    folder = tmp_path / "cache"
    folder.mkdir()
    nonce = "feedbeef"
    lock = folder / f"{cache.HOST}.{DEAD}.{nonce}.lock"
    lock.touch()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1]); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(lock)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        tmp = folder / f"k1.{cache.HOST}.{DEAD}.{nonce}.tmp.npy"
        tmp.write_bytes(b"x" * 100)
        (folder / "k2.npy").write_bytes(b"x" * 1000)
        (folder / "k2.json").write_text('{"errors": {}}')
        record = folder / f"k2.{cache.HOST}.{DEAD}.{nonce}.abcd1234.use"
        record.touch()
        cache._remove_stale(folder)
        assert tmp.exists() and record.exists() and lock.exists()
        cache.evict(folder, 0)
        assert (folder / "k2.npy").exists()  # in use by a live process: never evicted
    finally:
        holder.kill()
        holder.wait()
    cache._remove_stale(folder)  # the lock is free now: its owner is gone
    assert not tmp.exists() and not record.exists() and not lock.exists()
    cache.evict(folder, 0)
    assert not (folder / "k2.npy").exists()


def test_this_process_holds_its_own_lock(tmp_path):
    load_images(_images(tmp_path / "img", 2), 16, tmp_path / "cache", quiet=True)
    lock = tmp_path / "cache" / f"{cache.HOST}.{os.getpid()}.{cache._USE_NONCE}.lock"
    assert cache._lock_alive(lock) is True
    with open(lock) as f, pytest.raises(BlockingIOError):
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_an_orphaned_array_is_counted_and_reaped(tmp_path):
    """KEY.npy without KEY.json (a crash between the two renames) was outside the bound forever."""
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "orphan.npy").write_bytes(b"x" * 10_000)
    (folder / "busy.npy").write_bytes(b"x" * 10_000)  # a live writer between its renames: its use record protects it
    cache._hold_lock(folder)
    record = cache._use_record(folder, "busy")
    assert cache.evict(folder, 10**9) == 10_000
    assert not (folder / "orphan.npy").exists() and (folder / "busy.npy").exists()
    record.unlink()
