"""bench/gpu.py: says so and exits 0 without a GPU; its code paths (the Trainer with a timed loader, the ensemble's
inference, the table) run on CPU at a tiny configuration, so the first GPU run is not its first run."""

import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

pytestmark = pytest.mark.slow
COLUMNS = ["phase", "device", "backbone", "px", "batch", "precision", "workers", "images", "images/s", "GPU busy %",
           "loader wait %", "busy measured by"]


def _bench(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _table(stdout: str) -> tuple[list[dict], list[str]]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "").replace("-", "")) == set()  # the Markdown separator row
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]], header


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the bench would run")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    proc = _bench("--out", str(tmp_path / "b"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no CUDA GPU" in proc.stdout and "|" not in proc.stdout
    assert not (tmp_path / "b").exists()  # nothing generated or trained


def test_tiny_cpu_run_prints_the_table_with_sane_numbers(tmp_path):
    proc = _bench("--allow-cpu", "--tiny", "--backbone", "resnet10t", "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows, header = _table(proc.stdout)
    assert header == COLUMNS
    train, infer = rows
    assert train["phase"].startswith("training (epochs 2-2)") and infer["phase"].startswith("inference")
    for r in rows:
        assert r["backbone"] == "resnet10t" and r["px"] == "64" and r["batch"] == "8"
        assert int(r["images"]) > 0
        assert 0 < float(r["images/s"]) < 1e5
    assert int(train["images"]) <= 16 * 3  # one epoch of the training split of 16 studies (1-3 images each)
    busy, wait = float(train["GPU busy %"]), float(train["loader wait %"])
    assert 0 <= wait <= 100 and 0 <= busy <= 100 and math.isclose(busy + wait, 100, abs_tol=0.2)  # CPU: the clock
    assert train["busy measured by"].startswith("host clock")
    assert (tmp_path / "b" / "run" / "resnet10t" / "model.safetensors").is_file()  # the Trainer's own member
