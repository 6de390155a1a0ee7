"""A cache a shared machine can live with (issue 19.6): keyed by the set of files, bounded on disk with
least-recently-used eviction that spares entries in use, temporary files reaped by owner (host + PID) and age, and
durable (fsync'ed) atomic writes."""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import zoo.atomic
import zoo.data.cache as cache
from zoo.data import load_images


def _images(folder: Path, n: int, tag: str = "") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{tag}{i}.png"
        Image.fromarray(np.full((20, 30), 10 * i + 5, np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _no_decode(*_a, **_k):
    raise AssertionError("decoded again")


def _entries(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.json") if p.name.count(".") == 1)


def _disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".npy", ".json"))


def test_reordered_paths_reuse_the_entry_and_come_back_in_the_callers_order(tmp_path, monkeypatch):
    paths = _images(tmp_path / "img", 5)
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png")
    paths.insert(2, str(tmp_path / "img" / "bad.png"))
    first = load_images(paths, 16, tmp_path / "cache", quiet=True)
    monkeypatch.setattr(cache, "load_resized", _no_decode)
    shuffled = [paths[i] for i in (4, 2, 0, 5, 1, 3)]
    again = load_images(shuffled, 16, tmp_path / "cache", quiet=True)  # another seed's split: same set of files
    assert len(_entries(tmp_path / "cache")) == 1  # one entry for both orders
    assert again.paths == shuffled
    for i, p in enumerate(shuffled):
        j = paths.index(p)
        assert np.array_equal(np.asarray(again.array[i]), np.asarray(first.array[j]))
        assert again.ok[i] == first.ok[j]
    assert list(again.errors) == [str(tmp_path / "img" / "bad.png")]
    assert np.array_equal(np.asarray(again.array[[0, 3]]), np.stack([first.array[4], first.array[5]]))
    assert again.array.shape == (6, 16, 16) and again.array[0, 8, 8] == first.array[4][8, 8]


def test_cache_stays_under_its_bound_and_evicts_least_recently_used_never_in_use(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    sets = [_images(tmp_path / f"s{k}", 4, tag=f"s{k}_") for k in range(6)]
    entry = 4 * 32 * 32 + 128 + 100  # npy payload + header + metadata, about
    bound_gb = 2.5 * entry / 1e9  # room for two entries
    held = load_images(sets[0], 32, folder, quiet=True, max_gb=bound_gb)  # kept alive: in use all along
    for k in range(1, 6):
        load_images(sets[k], 32, folder, quiet=True, max_gb=bound_gb)
        gc.collect()
        assert _disk(folder) <= bound_gb * 1e9, f"after set {k}: {_disk(folder)} bytes on disk"
    assert len(_entries(folder)) == 2
    assert np.asarray(held.array[1]).max() == 15  # the entry in use was never evicted
    key_held = cache._key(sorted(os.path.abspath(p) for p in sets[0]), 32)
    assert key_held in _entries(folder)
    del held
    gc.collect()
    assert not list(folder.glob(f"{key_held}.*.use"))  # released with its arrays

    # least recently used goes first: set 0 (made first) is used again, then set 1 comes in: set 5 goes, set 0 stays
    monkeypatch.setattr(cache, "load_resized", _no_decode)
    load_images(sets[0], 32, folder, quiet=True, max_gb=bound_gb)  # a hit: no decode, and it counts as a use
    monkeypatch.undo()
    gc.collect()
    load_images(sets[1], 32, folder, quiet=True, max_gb=bound_gb)
    keys = {k: cache._key(sorted(os.path.abspath(p) for p in sets[k]), 32) for k in (0, 1, 5)}
    assert _entries(folder) == sorted([keys[0], keys[1]])


def test_a_set_bigger_than_the_bound_is_not_cached(tmp_path):
    paths = _images(tmp_path / "img", 3)
    with pytest.warns(UserWarning, match="over the .* GB cache bound"):
        arr = load_images(paths, 32, tmp_path / "cache", quiet=True, max_gb=1e-6)
    assert arr.ok.all() and not list((tmp_path / "cache").glob("*.npy"))


def test_temp_files_are_reaped_by_owner_and_age_not_pid_alone(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    dead = 2**22 + 12345  # above the usual pid_max: no such process here
    old = time.time() - 2 * cache.STALE_SECONDS
    files = {
        "mine_alive": f"k1.{cache.HOST}.{os.getpid()}.tmp.npy",
        "mine_dead": f"k2.{cache.HOST}.{dead}.tmp.npy",
        "foreign_fresh": f"k3.otherbox.{os.getpid()}.tmp.npy",  # same PID number, another host: not ours to judge
        "foreign_dead_fresh": f"k4.otherbox.{dead}.tmp.npy",
        "foreign_old": f"k5.otherbox.{os.getpid()}.tmp.npy",
    }
    for name in files.values():
        (folder / name).write_bytes(b"x")
    os.utime(folder / files["foreign_old"], (old, old))
    cache._remove_stale(folder)
    left = {k for k, name in files.items() if (folder / name).exists()}
    assert left == {"mine_alive", "foreign_fresh", "foreign_dead_fresh"}


def test_atomic_writes_fsync_the_file_and_its_folder_before_and_after_the_rename(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        return real_fsync(fd)

    def replace(a, b):
        events.append("replace")
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    zoo.atomic.write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert events == ["fsync file", "replace", "fsync dir"]
    events.clear()
    load_images(_images(tmp_path / "img", 2), 16, tmp_path / "cache", quiet=True)
    assert events == ["fsync file", "replace", "fsync dir"] * 2  # the array, then its metadata


@pytest.mark.parametrize("reordered", [False, True], ids=["plain-entry", "rowview"])
def test_read_means_what_numpy_indexing_means_for_every_kind_of_index(tmp_path, reordered):
    """ImageArray.read (rows read with pread from the cache file) gives what indexing the rows does: a boolean mask
    selects rows (it was read as rows 0 and 1), negative indices count from the end (they raised on a plain entry
    and worked through a RowView), out of range raises; through a plain entry and through a RowView (the same
    entry asked for in another order)."""
    paths = _images(tmp_path / "img", 5)
    load_images(paths, 16, str(tmp_path / "cache"), quiet=True)  # the entry, stored in this order
    arr = load_images(paths[::-1] if reordered else paths, 16, str(tmp_path / "cache"), quiet=True)
    assert isinstance(arr.array, cache.RowView) == reordered
    assert cache._whole_file_map(arr.array.data if reordered else arr.array)  # the pread path
    rows = np.asarray(arr.array)  # the rows in the caller's order
    mask = np.array([True, False, True, True, False])
    for idx in (mask, -1, [-1, 0], np.array([4, -5]), slice(-3, None), 2, [3, 1], mask.tolist()):
        got = arr.read(idx)
        assert np.array_equal(got, rows[idx]), idx
    for bad in (5, -6, [0, 9], np.ones(4, bool)):
        with pytest.raises(IndexError):
            arr.read(bad)
