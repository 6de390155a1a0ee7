"""Nothing stale, nothing overwritten: --resume compares a fingerprint, one run per --out (a lock naming the holder),
and --cam-dir overlays named by study and image."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, TINY, run_script

from zoo.runlock import HOLDER_NAME, RunLocked, run_lock

TINY_ARGS = ["--models", "resnet10t", "--img-size", "48", "--lr", "1e-3", "--head-hidden", "32", "--quiet",
             "--no-export"]  # no ONNX graphs: these runs test training, not the exported graphs (tests/test_export.py)


@pytest.mark.slow
def test_resume_refuses_a_changed_config_or_data_naming_it_and_skips_an_unchanged_one(tmp_path, synthetic_root):
    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    args = ["--data", data, *TINY_ARGS, "--out", tmp_path / "w"]
    first = run_script("train_all.py", *args, "--epochs", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    fp = json.loads((tmp_path / "w" / "resnet10t" / "fingerprint.json").read_text())
    assert fp["config"]["epochs"] == 1 and fp["data"]["sha256"]
    weights = (tmp_path / "w" / "resnet10t" / "model.safetensors").read_bytes()

    same = run_script("train_all.py", *args, "--epochs", "1", "--resume", cwd=tmp_path)
    assert same.returncode == 0, same.stderr[-2000:]
    assert "already trained, skipped" in same.stdout

    more = run_script("train_all.py", *args, "--epochs", "2", "--resume", cwd=tmp_path)
    assert more.returncode == 2
    assert "--resume refused" in more.stderr and "epochs 1 -> 2" in more.stderr
    assert "already trained, skipped" not in more.stdout

    recipe = run_script("train_all.py", *args, "--epochs", "1", "--recipe", "seed", "--resume", cwd=tmp_path)
    assert recipe.returncode == 2 and "recipe 'modern' -> 'seed'" in recipe.stderr

    labels = pd.read_csv(data / "train.csv", dtype={"id": str})
    i = labels["label"].first_valid_index()
    labels.loc[i, "label"] = 1 - labels.loc[i, "label"]  # one label corrected in train.csv
    labels.assign(label=labels["label"].astype("Int64")).to_csv(data / "train.csv", index=False)
    relabelled = run_script("train_all.py", *args, "--epochs", "1", "--resume", cwd=tmp_path)
    assert relabelled.returncode == 2 and "the data" in relabelled.stderr and "epochs 1 ->" not in relabelled.stderr
    assert (tmp_path / "w" / "resnet10t" / "model.safetensors").read_bytes() == weights  # nothing was touched


def test_an_interrupted_member_carries_its_fingerprint_in_the_checkpoint(tmp_path):
    """The fingerprint travels with each epoch of the checkpoint, so a half-trained member is compared too."""
    import torch

    from zoo.checkpoint import Checkpoint, fingerprint, resume_changes
    from zoo.config import TrainConfig

    data = {"sha256": "x", "images": 3, "pseudo_labelled": 0, "root": "/d"}
    fp = fingerprint(TrainConfig(epochs=3), data)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    Checkpoint(tmp_path / "m" / "checkpoint", fingerprint=fp).save({"epoch": 1}, model, opt, sched, best=True)
    assert resume_changes(tmp_path / "m", fp) == []
    assert resume_changes(tmp_path / "m", fingerprint(TrainConfig(epochs=3, device="cpu", workers=4), data)) == []
    assert resume_changes(tmp_path / "m", fingerprint(TrainConfig(epochs=5, lr=1e-3), data)) == [
        "epochs 3 -> 5", "lr 0.0001 -> 0.001"]
    changed = resume_changes(tmp_path / "m", fingerprint(TrainConfig(epochs=3), {**data, "sha256": "y"}))
    assert len(changed) == 1 and changed[0].startswith("the data")
    assert resume_changes(tmp_path / "new", fp) == []  # nothing trained there: nothing to compare


def test_data_fingerprint_sees_labels_files_and_not_row_order(tmp_path):
    from zoo.checkpoint import data_fingerprint

    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"x" * (i + 1))
    df = pd.DataFrame({"path": [str(tmp_path / f"{i}.png") for i in range(3)], "id": ["a", "b", "c"],
                       "part": "HAND", "label": [0.0, 1.0, np.nan]})
    base = data_fingerprint(df, tmp_path)["sha256"]
    assert data_fingerprint(df.iloc[::-1], tmp_path)["sha256"] == base
    assert data_fingerprint(df.assign(label=[1.0, 1.0, np.nan]), tmp_path)["sha256"] != base
    (tmp_path / "1.png").write_bytes(b"yy")  # same size, new content: a new mtime
    os.utime(tmp_path / "1.png", ns=(1, 1))
    assert data_fingerprint(df, tmp_path)["sha256"] != base


def test_a_second_run_on_one_out_is_refused_naming_the_first(tmp_path, synthetic_root):
    """A held lock (this test process) and a train_all.py process on the same --out: refused at once, naming the
    holder's pid and host, before anything in the folder is touched."""
    out = tmp_path / "w"
    with run_lock(out) as me:
        (out / "keep.txt").write_text("the first run's files")
        proc = run_script("train_all.py", "--data", synthetic_root, *TINY_ARGS, "--epochs", "1", "--out", out,
                          cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "another train_all.py run is using this --out" in proc.stderr
        assert f"pid {os.getpid()}" in proc.stderr and socket.gethostname() in proc.stderr
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["keep.txt"]
        with pytest.raises(RunLocked, match=f"pid {me['pid']}"):  # in-process too
            with run_lock(out):
                pass
    with run_lock(out):  # released: free again
        pass


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_note(tmp_path):
    out = tmp_path / "w"
    code = textwrap.dedent(f"""
        import os
        from zoo.runlock import run_lock
        cm = run_lock({str(out)!r})
        cm.__enter__()
        os._exit(0)  # dies holding it: the OS lock goes, its record stays
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    dead = json.loads((out / HOLDER_NAME).read_text())
    notes = []
    with run_lock(out, say=notes.append) as me:
        assert me["pid"] == os.getpid()
    assert len(notes) == 1 and "taking over" in notes[0] and f"pid {dead['pid']}" in notes[0]
    assert "is no longer running" in notes[0]
    assert not (out / HOLDER_NAME).exists()


def test_cam_overlays_of_same_named_images_in_two_studies_do_not_overwrite(trained_run, tmp_path):
    """MURA names every study's images image1..N: two studies with image1.png give two overlays per member."""
    from zoo.ensemble import Ensemble
    from zoo.explain import overlay_names, write_cams

    src = sorted((trained_run["data"] / "test").iterdir())[:2]
    rows = []
    for k, f in enumerate(src):
        study = tmp_path / "MURA-v1.1" / "valid" / "XR_HAND" / "patient00001" / f"study{k + 1}_negative"
        study.mkdir(parents=True)
        shutil.copy(f, study / "image1.png")
        rows.append({"path": str(study / "image1.png"), "id": f"XR_HAND/patient00001/study{k + 1}_negative"})
    ens = Ensemble.from_paths([str(trained_run["out"])])
    n = write_cams(ens, pd.DataFrame(rows), tmp_path / "cams", quiet=True)
    assert n == 2 * len(TINY)
    for m in TINY:
        files = sorted(p.name for p in (tmp_path / "cams" / m).iterdir())
        assert files == ["XR_HAND%2Fpatient00001%2Fstudy1_negative+image1.png",
                         "XR_HAND%2Fpatient00001%2Fstudy2_negative+image1.png"]
    # collision-free however ids and names look: '/' vs '_' , a repeated stem, '..'
    names = overlay_names("a/b", ["x/image1.png", "y/image1.jpg"]) + overlay_names("a_b", ["image1.png"])
    names += overlay_names("..", [".."])
    assert len(set(names)) == len(names) and all("/" not in n and n not in (".", "..") for n in names)


# -- the run folder (zoo.run) ---------------------------------------------------------------------------------------
def _finished_member(folder, auc: float, predictions: bool = True):
    """A member folder as training leaves it (tiny network, metrics.json last), without training."""
    from zoo.model import BoneClassifier

    BoneClassifier("resnet10t", img_size=32, head_hidden=[8]).save_member(folder)
    if predictions:
        rng = np.random.default_rng(0)
        labels = np.tile([0, 1], 20)
        pd.DataFrame({"id": [f"s{i}" for i in range(40)], "label": labels,
                      "prob": np.clip(labels * auc + rng.uniform(0, 0.5, 40), 0, 1)}).to_csv(
            folder / "val_predictions.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps({"backbone": "resnet10t", "val_auc": auc, "params": 1e6,
                                                     "train_time_s": 1.0}))
    return folder


def test_the_leaderboard_names_each_member_and_the_backbone_it_was_trained_from(tmp_path):
    """``member`` holds the folder's name (``resnet10t-fold1``), ``backbone`` the registered backbone (issue 20: the
    ``backbone`` column held member names)."""
    from zoo import leaderboard

    for k, auc in enumerate((0.7, 0.9)):
        _finished_member(tmp_path / f"resnet10t-fold{k}", auc)
    board = leaderboard.collect(tmp_path)
    assert list(board.columns[:2]) == ["member", "backbone"]
    assert board["member"].tolist() == ["resnet10t-fold1", "resnet10t-fold0"]  # best validation AUC first
    assert board["backbone"].tolist() == ["resnet10t", "resnet10t"]


def test_the_run_writes_its_results_and_a_push_reads_them_without_writing(tmp_path):
    """zoo.run.write_results writes leaderboard.csv/.md and roc.png (no out-of-fold file without folds); the push
    plan lists those files as they are and writes nothing into the run."""
    from zoo.hub import plan_push
    from zoo.run import RESULT_FILES, write_results

    run = tmp_path / "run"
    _finished_member(run / "resnet10t", 0.8)
    board = write_results(run)
    assert board["member"].tolist() == ["resnet10t"]
    assert all((run / f).is_file() for f in RESULT_FILES) and not (run / "oof_predictions.csv").exists()
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    plan = plan_push(run, "org/run")
    assert {f: plan.files[f] for f in RESULT_FILES} == {f: (run / f).resolve() for f in RESULT_FILES}
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before
