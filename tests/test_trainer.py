"""The trainer on Accelerate: DDP on 2 CPU processes, resume after a finished run and after SIGKILL, fp16 scaling."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, run_script
from torch.utils.data import DataLoader

from zoo.data import load_dataset, load_images, split_by_study
from zoo.inference import ArrayDataset, predict_array
from zoo.metrics import aggregate_studies, binary_metrics
from zoo.model import BoneClassifier
from zoo.runtime import native_bf16, resolve_precision
from zoo.train import TrainConfig, make_accelerator

pytestmark = pytest.mark.slow
TINY_ARGS = ["--models", "resnet10t", "--img-size", "48", "--lr", "1e-3", "--head-hidden", "32", "--quiet",
             "--no-export"]  # no ONNX graphs: these runs test training, not the exported graphs (tests/test_export.py)


def _one_process_val_auc(member, data_root, seed=0, precision="auto"):
    """What predict.py --evaluate computes, on the member's own validation split, in one process."""
    ds = load_dataset(data_root)
    _, val = split_by_study(ds.train, 0.2, seed)
    model = BoneClassifier.load(member)
    arr = load_images(val["path"].tolist(), model.img_size, "", quiet=True)
    probs = predict_array(model, DataLoader(ArrayDataset(arr, np.flatnonzero(arr.ok)), batch_size=16),
                          torch.device("cpu"), precision)
    val = val[arr.ok].assign(prob=probs)
    st = aggregate_studies(val, "prob")
    return binary_metrics(st["label"].to_numpy(), st["prob"].to_numpy())["auc"], st


def test_two_process_ddp_run_gathers_validation_exactly_once(tmp_path, synthetic_root):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(ROOT / "train_all.py"), "--data", str(synthetic_root), *TINY_ARGS, "--epochs", "1", "--device", "cpu",
           "--mixed-precision", "no", "--out", str(tmp_path / "w")]  # fp32: bf16 rounding could swap near-tied studies
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed: 2 processes" in proc.stdout
    assert proc.stdout.count("Leaderboard") == 1  # only the main process reports
    members = [p.parent.name for p in (tmp_path / "w").glob("*/config.json")]
    assert members == ["resnet10t"]
    cfg = json.loads((tmp_path / "w" / "resnet10t" / "config.json").read_text())
    assert cfg["training"]["processes"] == 2
    stored = cfg["metrics"]["val_auc"]
    auc, st = _one_process_val_auc(tmp_path / "w" / "resnet10t", synthetic_root, precision="fp32")
    assert stored == pytest.approx(auc, abs=1e-6)
    val = pd.read_csv(tmp_path / "w" / "resnet10t" / "val_predictions.csv")
    assert sorted(val["id"]) == sorted(st["id"]) and val["id"].is_unique  # every study once, no padded duplicate
    tol = 2e-3 if cfg["training"]["mixed_precision"] == "bf16" else 1e-5  # bf16 keeps 8 bits of mantissa
    assert np.allclose(val.sort_values("id")["prob"], st.sort_values("id")["prob"], atol=tol)


def test_resume_of_a_finished_run_says_skipped(tmp_path, synthetic_root):
    args = ["--data", synthetic_root, *TINY_ARGS, "--epochs", "1", "--out", tmp_path / "w"]
    assert run_script("train_all.py", *args, cwd=tmp_path).returncode == 0
    proc = run_script("train_all.py", *args, "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "already trained, skipped" in proc.stdout and "FAILED" not in proc.stderr


def test_sigkill_mid_run_then_resume_reaches_the_uninterrupted_auc(tmp_path, synthetic_root):
    args = ["--data", str(synthetic_root), *TINY_ARGS, "--epochs", "3", "--seed", "3"]
    straight = run_script("train_all.py", *args, "--out", tmp_path / "a", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    victim = subprocess.Popen([sys.executable, str(ROOT / "train_all.py"), *args, "--out", str(tmp_path / "b")],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "b" / "resnet10t" / "checkpoint" / "LATEST"
    deadline = time.time() + 240
    while not latest.is_file() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert victim.poll() is None, "the run ended before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)  # during epoch 2
    victim.wait()
    assert not (tmp_path / "b" / "resnet10t" / "metrics.json").exists()
    resumed = run_script("train_all.py", *args, "--out", tmp_path / "b", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "a" / "resnet10t" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "resnet10t" / "metrics.json").read_text())
    assert b["epochs_run"] == 3
    assert b["val_auc"] == pytest.approx(a["val_auc"], abs=0.002)
    log = pd.read_json(tmp_path / "b" / "resnet10t" / "metrics.jsonl", lines=True)
    assert log["epoch"].tolist() == [1, 2, 3]


def test_precision_choices():  # one vocabulary (issue 20): fp32, with Accelerate's "no" as its alias
    assert resolve_precision("auto", "cpu", training=True) == ("bf16" if native_bf16() else "fp32")
    assert resolve_precision("bf16", "cpu", training=True) == "bf16"
    assert resolve_precision("no", "cpu", training=True) == "fp32"
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        resolve_precision("fp16", "cpu", training=True)
    with pytest.raises(ValueError, match="must be one of"):
        resolve_precision("fp8", "cpu", training=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 mixed precision needs a CUDA GPU")
def test_fp16_accelerator_has_a_grad_scaler():
    acc = make_accelerator(TrainConfig(mixed_precision="fp16", device="cuda"))
    assert acc.mixed_precision == "fp16" and isinstance(acc.scaler, torch.amp.GradScaler)


def test_training_step_goes_through_the_grad_scaler():
    """With a scaler on the Accelerator (what fp16 configures on a GPU), every step is scaled, unscaled and checked."""
    from zoo.data import ImageArray
    from zoo.engine import TrainStep, train_one_epoch
    from zoo.loss import WeightedBCE

    acc = make_accelerator(TrainConfig(device="cpu", mixed_precision="no", batch_size=4, micro_batch=4))
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    torch.manual_seed(0)
    model = BoneClassifier("resnet10t", img_size=32, head_hidden=[8])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model, opt = acc.prepare(model, opt)
    rng = np.random.default_rng(0)
    images = ImageArray([str(i) for i in range(8)], 32, rng.integers(0, 255, (8, 32, 32), dtype=np.uint8),
                        np.ones(8, bool), {})
    loader = acc.prepare_data_loader(DataLoader(ArrayDataset(images, np.arange(8), np.array([0, 1] * 4)),
                                                batch_size=4, drop_last=True))
    loss = train_one_epoch(TrainStep(model, WeightedBCE(1.0), opt, acc, mean=0.5, std=0.25), loader, quiet=True)
    assert np.isfinite(loss)
    assert acc.scaler._growth_tracker is not None and int(acc.scaler._growth_tracker) == 2  # two scaled steps


def test_predicting_never_imports_the_trainer():
    code = ("import sys, predict, zoo.ensemble, zoo.cam; "
            "bad = [m for m in ('zoo.train', 'zoo.engine', 'zoo.checkpoint', 'accelerate') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
