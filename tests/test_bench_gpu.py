"""bench/gpu.py: says so and exits 0 without a GPU; its code paths (the Trainer with a timed loader, the ensemble's
inference, the table) run on CPU at a tiny configuration, so the first GPU run is not its first run.

Kept cheap (it took ~108 s in a loaded suite): ``main`` runs in this process (as predict.py's tests do), not in a fresh
interpreter that imports torch, timm, Accelerate and scikit-learn again, and on one PyTorch thread (see
:func:`one_thread`). The same code runs, at the same sizes."""

import math
import os

import pytest
import torch
from conftest import bench_module

pytestmark = pytest.mark.slow
COLUMNS = ["phase", "device", "backbone", "px", "batch", "precision", "workers", "images", "images/s", "GPU busy %",
           "loader wait %", "busy measured by"]


@pytest.fixture(scope="module")
def gpu():
    """bench/gpu.py as a module."""
    return bench_module("gpu")


@pytest.fixture
def one_thread():
    """PyTorch's intra-op pool at one thread while the test runs: at 64 px and batch 8 a second thread gains little on
    a quiet 2-core machine, and on a shared one its spin-waiting made each training step ~20x slower (CPU and wall).
    Only the scheduling changes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _bench(gpu, capsys, *args: str, cwd) -> tuple[int, str]:
    """``python bench/gpu.py ARGS`` in ``cwd``: (exit code, stdout)."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        rc = gpu.main(list(args))
    finally:
        os.chdir(old)
    return rc, capsys.readouterr().out


def _table(stdout: str) -> tuple[list[dict], list[str]]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "").replace("-", "")) == set()  # the Markdown separator row
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]], header


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the bench would run")
def test_without_a_gpu_it_says_so_and_exits_0(gpu, capsys, tmp_path):
    rc, stdout = _bench(gpu, capsys, "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert rc == 0
    assert "no CUDA GPU" in stdout and "|" not in stdout
    assert not (tmp_path / "b").exists()  # nothing generated or trained


def test_tiny_cpu_run_prints_the_table_with_sane_numbers(gpu, capsys, one_thread, tmp_path):
    rc, stdout = _bench(gpu, capsys, "--allow-cpu", "--tiny", "--backbone", "resnet10t", "--out", str(tmp_path / "b"),
                        cwd=tmp_path)
    assert rc == 0
    rows, header = _table(stdout)
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
