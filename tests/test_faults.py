"""Faults: a process killed while it decodes, writes or pushes leaves every file either old-and-complete or
new-and-complete; readers never combine a member's new weights with its old config. (SIGKILL during training and
--resume: tests/test_trainer.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT
from PIL import Image

from zoo.atomic import write_text
from zoo.data import load_images
from zoo.model import BoneClassifier, WeightsMismatch


def _images(folder: Path, n: int, side: int = 600) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = folder / f"HAND_{i:010d}_image1.png"
        Image.fromarray(rng.integers(0, 255, (side, side), dtype=np.uint8)).save(p)
        out.append(str(p))
    return out


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            raise AssertionError(f"the process ended before the moment to kill it: {proc.stderr.read()[-2000:]}")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_cache_killed_while_decoding_is_rebuilt(tmp_path):
    paths = _images(tmp_path / "img", 120)
    cache = tmp_path / "cache"
    code = f"from zoo.data import load_images; load_images({paths!r}, 256, {str(cache)!r}, workers=1, quiet=True)"
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    _kill_when(proc, lambda: any(cache.glob("*.tmp.npy")))
    assert not list(cache.glob("*.json"))  # no entry claims to be complete
    arr = load_images(paths, 256, cache, quiet=True)
    fresh = load_images(paths, 256, "", quiet=True)
    assert arr.ok.all() and np.array_equal(np.asarray(arr.array), fresh.array)
    assert not list(cache.glob("*.tmp*"))  # the dead decoder's temporary file is gone
    data = next(cache.glob("*.npy"))  # now damage the complete entry: it is detected and decoded again
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    again = load_images(paths, 256, cache, quiet=True)
    assert np.array_equal(np.asarray(again.array), fresh.array)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    f = tmp_path / "report.md"
    write_text(f, "old, complete\n")
    with pytest.raises(ZeroDivisionError):
        from zoo.atomic import atomic_path

        with atomic_path(f) as tmp:
            tmp.write_text("new, half")
            1 / 0  # noqa: B018
    assert f.read_text() == "old, complete\n" and [p.name for p in tmp_path.iterdir()] == ["report.md"]


@pytest.mark.slow
def test_predict_killed_at_any_moment_leaves_old_or_new_output(trained_run, tmp_path):
    out = tmp_path / "pred.csv"
    old = "id,label\nOLD,0.5\n"
    out.write_text(old)
    cmd = [sys.executable, str(ROOT / "predict.py"), "--data", str(trained_run["data"]), "--models",
           str(trained_run["out"]), "-output", str(out), "--quiet"]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True)
    full = time.monotonic() - t0
    n = pd.read_csv(out).shape[0]
    out.write_text(old)
    for frac in (0.6, 0.9, 0.97, 1.0):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(full * frac)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        text = out.read_text()
        assert text == old or (len(pd.read_csv(out)) == n and pd.read_csv(out)["label"].notna().all()), frac
        out.write_text(old)


def _member(threshold: float, fill: float) -> BoneClassifier:
    m = BoneClassifier("resnet10t", img_size=32, head_hidden=[8], threshold=threshold)
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(fill)
    return m


def test_readers_never_use_new_weights_with_an_old_config(tmp_path):
    """A writer re-saves a member folder with two alternating versions while a reader loads it: every model loaded
    has the config (threshold) of its own weights."""
    folder = tmp_path / "m"
    versions = {0.1: _member(0.1, 0.01), 0.9: _member(0.9, 0.09)}
    versions[0.1].save_member(folder)
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            versions[(0.1, 0.9)[i % 2]].save_member(folder)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    seen = set()
    try:
        for _ in range(25):
            m = BoneClassifier.load(folder)
            fill = float(next(m.head.parameters()).flatten()[0])
            assert fill == pytest.approx(m.threshold / 10, abs=1e-6)  # weights and config of one version
            seen.add(m.threshold)
    finally:
        stop.set()
        t.join()
    assert seen  # (which versions were read depends on timing)
    import json

    cfg = json.loads((folder / "config.json").read_text())
    cfg["weights_sha256"] = "0" * 64  # one file replaced by hand: refused, with what to do
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsMismatch, match="download the whole member folder again"):
        BoneClassifier.load(folder)


@pytest.mark.slow
def test_hub_push_killed_midway_leaves_the_run_intact(trained_run, tmp_path):
    """A test double for the Hub that is killed in the middle of an upload: the local run folder is byte for byte
    what it was and still loads (push only reads the run; what it uploads is rendered in memory)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run["out"], run)
    before = {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    marker = tmp_path / "uploading"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from zoo.hub import push_run

        class SlowHub:
            def create_repo(self, *a, **k): pass
            def repo_info(self, *a, **k): return type("Info", (), {{"private": True}})()
            def create_branch(self, *a, **k): pass
            def create_commit(self, *a, **k):
                Path({str(marker)!r}).touch()
                time.sleep(60)

        push_run({str(run)!r}, "me/run", api=SlowHub())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    _kill_when(proc, marker.exists)
    for d in sorted(p for p in run.iterdir() if p.is_dir()):
        BoneClassifier.load(d)
    after = {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    assert after == before
    assert not list(run.rglob("*.tmp*"))
    os.sync()
