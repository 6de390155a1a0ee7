"""Head, loss, member save/load, resume, and the end-to-end train_all.py run."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import RUN_SIZE, TINY, run_script
from safetensors.torch import load_file

from zoo.data import load_dataset
from zoo.head import MLPHead
from zoo.loss import WeightedBCE, positive_weight
from zoo.members import ShapeMismatch
from zoo.model import BoneClassifier
from zoo.train import TrainConfig, Trainer


def test_head_is_the_seed_mlp():
    head = MLPHead(672)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "BatchNorm1d", "Dropout", "ReLU"] * 2 + ["Linear"]
    assert [m.out_features for m in head if isinstance(m, torch.nn.Linear)] == [1024, 512, 1]
    assert head[2].p == 0.3


def test_weighted_bce_matches_formula():
    y = np.array([1, 0, 0, 0, np.nan])
    assert positive_weight(y) == 3.0
    loss = WeightedBCE.from_labels(y)
    logits, target = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([1.0, 0.0, 1.0])
    p = torch.sigmoid(logits)
    manual = -(3.0 * target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    assert torch.allclose(loss(logits, target), manual, atol=1e-6)
    assert WeightedBCE.from_labels(y, pos_weight=1.5).pos_weight.item() == 1.5


def test_save_load_round_trip_is_identical(tmp_path):
    torch.manual_seed(0)
    model = BoneClassifier("resnet10t", img_size=64, head_hidden=[32], threshold=0.42,
                           metrics={"val_auc": 0.9}).eval()
    model.save_member(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    import hashlib

    weights = (tmp_path / "m" / "model.safetensors").read_bytes()
    assert cfg.pop("weights_sha256") == hashlib.sha256(weights).hexdigest()  # ties the config to its weights
    assert cfg == model.get_config()  # the rest is the constructor
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"model.safetensors", "config.json", "README.md"}
    again = BoneClassifier.load(tmp_path / "m")
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert again.threshold == 0.42 and again.head_hidden == [32]


def test_load_refuses_weights_that_do_not_match_the_config(tmp_path):
    BoneClassifier("resnet10t", img_size=64, head_hidden=[32]).save_member(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["head_hidden"] = [64]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ShapeMismatch, match=r"head_hidden \[64\] asks for head widths \[64, 1\]"):
        BoneClassifier.load(tmp_path / "m")  # before building (issue 19.3), no longer torch's "size mismatch"


def _tiny_cfg(**kw):
    return TrainConfig(**{"backbone": "resnet10t", "img_size": 32, "batch_size": 16, "lr": 1e-3, "head_hidden": [32],
                          "cache_dir": "", "quiet": True, "seed": 1, "export": False, **kw})


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, synthetic_root, monkeypatch):
    ds = load_dataset(synthetic_root)
    ds.train = ds.train[ds.train["id"].isin(ds.train["id"].drop_duplicates().iloc[:80])]
    Trainer(_tiny_cfg(epochs=2), ds, tmp_path / "straight").fit()

    class Interrupted(Exception):
        pass

    def boom(*a, **k):
        raise Interrupted

    monkeypatch.setattr(Trainer, "export", boom)
    with pytest.raises(Interrupted):  # stopped after epoch 1, checkpoint left behind
        Trainer(_tiny_cfg(epochs=1), ds, tmp_path / "resumed").fit()
    assert (tmp_path / "resumed" / "checkpoint" / "LATEST").read_text() == "epoch-0001"
    monkeypatch.undo()
    Trainer(_tiny_cfg(epochs=2), ds, tmp_path / "resumed").fit(resume=True)
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "resumed" / "checkpoint").exists()
    assert len(pd.read_json(tmp_path / "resumed" / "metrics.jsonl", lines=True)) == 2
    again = Trainer(_tiny_cfg(epochs=2), ds, tmp_path / "resumed").fit(resume=True)
    assert again["skipped"] == "already trained"


@pytest.mark.slow
def test_train_all_end_to_end_learns(trained_run):
    proc, out = trained_run["proc"], trained_run["out"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert trained_run["seconds"] < 120, f"took {trained_run['seconds']:.0f}s"
    board = pd.read_csv(out / "leaderboard.csv")
    assert sorted(board["member"]) == sorted(TINY)
    assert board["val_auc"].max() > 0.8, board  # it really learns the synthetic findings
    assert board["val_auc"].min() > 0.65, board
    for name in TINY:
        member = out / name
        for f in ("model.safetensors", "config.json", "README.md", "metrics.json", "metrics.jsonl",
                  "val_predictions.csv", "curves.png"):
            assert (member / f).is_file(), f
        cfg = json.loads((member / "config.json").read_text())
        assert cfg["backbone"] == name and cfg["img_size"] == RUN_SIZE
        assert cfg["training"]["epochs"] == 2 and cfg["training"]["n_unlabelled_studies"] > 0
        assert math.isclose(cfg["metrics"]["val_auc"], board.set_index("backbone").loc[name, "val_auc"])
        assert 0 < cfg["threshold"] < 1
        assert not (member / "checkpoint").exists()
    assert (out / "leaderboard.md").read_text().count("|") > 20 and (out / "roc.png").stat().st_size > 1000
    assert "Leaderboard" in proc.stdout


@pytest.mark.slow
def test_train_all_reports_a_failing_member_and_trains_the_rest(tmp_path, synthetic_root):
    """Offline ImageNet weights for regnetx_002 only: resnet10t fails (reported), regnetx_002 trains from them."""
    import timm
    from safetensors.torch import save_file

    (tmp_path / "imagenet").mkdir()
    rgb = timm.create_model("regnetx_002").state_dict()
    save_file({k: v.contiguous() for k, v in rgb.items()}, str(tmp_path / "imagenet" / "regnetx_002.safetensors"))
    proc = run_script("train_all.py", "--data", synthetic_root, "--models", "resnet10t", "regnetx_002",
                      "--pretrained-weights", tmp_path / "imagenet", "--epochs", "1", "--img-size", "32",
                      "--out", tmp_path / "w", "--quiet", cwd=tmp_path)
    assert proc.returncode == 1
    assert "[resnet10t] FAILED" in proc.stderr and "no resnet10t.safetensors" in proc.stderr
    assert pd.read_csv(tmp_path / "w" / "leaderboard.csv")["member"].tolist() == ["regnetx_002"]
    assert json.loads((tmp_path / "w" / "regnetx_002" / "config.json").read_text())["training"]["pretrained_weights"]
    proc = run_script("train_all.py", "--data", synthetic_root, "--models", "nonet", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown backbone 'nonet'" in proc.stderr


def test_train_all_help_explains_every_flag(tmp_path):
    out = run_script("train_all.py", "--help", cwd=tmp_path).stdout
    for flag in ("--data", "--models", "--epochs", "--img-size", "--batch-size", "--lr", "--out", "--device",
                 "--pretrained", "--no-pretrained", "--seed", "--resume", "--push-to-hub", "--patience"):
        assert flag in out


@pytest.mark.slow
def test_semi_supervised_run_uses_the_unlabelled_studies(tmp_path, synthetic_root):
    out = tmp_path / "w"
    proc = run_script("train_all.py", "--data", synthetic_root, "--models", "resnet10t", "--epochs", "2",
                      "--img-size", RUN_SIZE, "--lr", "1e-3", "--out", out, "--semi-supervised",
                      "--pseudo-confidence", "0.7", "--no-export", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads((out / "round1" / "resnet10t" / "config.json").read_text())["training"]
    second = json.loads((out / "resnet10t" / "config.json").read_text())["training"]
    used = second["semi_supervised"]
    assert first["semi_supervised"] is None and used["unlabelled_studies"] == first["n_unlabelled_studies"] > 0
    assert used["pseudo_labelled_studies"] > 0
    assert second["n_train_images"] > first["n_train_images"]  # the pseudo-labelled images joined training
    assert second["n_val_images"] == first["n_val_images"]  # validation keeps real labels only
    assert "pseudo-labelled by a first-round ensemble" in (out / "resnet10t" / "README.md").read_text()
    assert pd.read_csv(out / "leaderboard.csv")["member"].tolist() == ["resnet10t"]
