"""Recipes, k-fold members with out-of-fold predictions, fitted combiners chosen on validation, the budget preset."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_script

from zoo import budget
from zoo.cli.train import config_for, get_args_parser
from zoo.combiners import create_combiner
from zoo.config import TrainConfig
from zoo.data import fold_split, load_dataset
from zoo.data.transforms import train_augment
from zoo.ensemble import Ensemble
from zoo.loader import Member
from zoo.loss import WeightedBCE
from zoo.members import finished_members
from zoo.metrics import binary_metrics
from zoo.recipes import RECIPES
from zoo.train import warmup_cosine


def _args(*argv: str):
    return get_args_parser().parse_args(list(argv))


def test_seed_recipe_is_the_original_and_flags_override_a_recipe():
    seed = config_for(_args("--data", "D", "--recipe", "seed"), "regnet_x_800mf")
    assert (seed.optimizer, seed.lr, seed.scheduler, seed.step_size, seed.gamma, seed.epochs, seed.img_size) == \
        ("adam", 1e-4, "step", 5, 0.1, 20, 512)
    assert (seed.rotation, seed.hflip, seed.translate, seed.head_hidden, seed.dropout) == (30.0, True, 0.1,
                                                                                           [1024, 512], 0.3)
    assert (seed.ema_decay, seed.crop_scale, seed.label_smoothing, seed.mixup) == (0.0, 1.0, 0.0, 0.0)
    modern = config_for(_args("--recipe", "modern", "--lr", "3e-4", "--no-hflip"), "resnet10t")
    assert modern.recipe == "modern" and modern.optimizer == "adamw" and modern.scheduler == "cosine"
    assert modern.lr == 3e-4 and modern.hflip is False and modern.ema_decay > 0  # flags win, the rest is the recipe
    for r in RECIPES.values():  # every recipe value is a TrainConfig field
        assert set(r.values) <= set(TrainConfig.field_names()), r.name


def test_warmup_cosine_rises_then_decays_to_the_floor():
    f = warmup_cosine(10, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    vals = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(vals, vals[1:])) and vals[-1] == pytest.approx(0.01)


def test_label_smoothing_and_soft_targets():
    logits, y = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0])
    smooth = WeightedBCE(1.0, smoothing=0.2)(logits, y)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([0.9, 0.1]))
    assert smooth.item() == pytest.approx(expected.item())
    with pytest.raises(ValueError):
        WeightedBCE(1.0, smoothing=1.0)


def test_modern_augmentation_keeps_shape_and_dtype_and_varies():
    aug = train_augment(20, True, 0.05, size=64, crop_scale=0.6, brightness=0.2, contrast=0.2, gamma=0.2)
    x = torch.randint(0, 255, (1, 64, 64), dtype=torch.uint8)
    outs = [aug(x) for _ in range(4)]
    assert all(o.shape == (1, 64, 64) and o.dtype == torch.uint8 for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_folds_validate_every_labelled_study_exactly_once(synthetic_root):
    ds = load_dataset(synthetic_root)
    labelled = set(ds.train.loc[ds.train["label"].notna(), "id"])
    seen: list[str] = []
    for k in range(4):
        tr, va = fold_split(ds.train, 4, k, seed=3)
        assert not set(tr["id"]) & set(va["id"])  # no study straddles
        assert set(tr["id"]) | set(va["id"]) == labelled
        seen += sorted(set(va["id"]))
    assert sorted(seen) == sorted(labelled)
    with pytest.raises(ValueError, match="fewer folds"):
        fold_split(ds.train.head(6), 5, 0)


def _groups(n):
    return [SimpleNamespace(val_auc=0.7, threshold=0.5) for _ in range(n)]


def test_select_combiner_finds_the_informative_members():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.clip(y * 0.3 + rng.normal(0.35, 0.15, 400), 0, 1)
    good2 = np.clip(y * 0.25 + rng.normal(0.35, 0.15, 400), 0, 1)
    noise = rng.uniform(0, 1, 400)
    x = np.column_stack([noise, good, good2])
    sel = create_combiner("select", _groups(3)).fit(x, y)
    w = sel.weights() / sel.weights().sum()
    assert w[0] < 0.1 and w[1] > w[0] and w[2] > w[0]
    auc = lambda p: binary_metrics(y, p)["auc"]  # noqa: E731
    assert auc(sel.combine(x)) > auc(create_combiner("mean", _groups(3)).combine(x))


def test_auto_combiner_chooses_on_validation_and_keeps_mean_without_it():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    x = np.column_stack([rng.uniform(0, 1, 300), np.clip(y * 0.4 + rng.normal(0.3, 0.1, 300), 0, 1)])
    auto = create_combiner("auto", _groups(2))
    assert auto.chosen.name == "mean"  # not fitted: the plain mean
    auto.fit(x, y)
    assert set(auto.scores) >= {"mean", "weighted", "rank", "select"} and "auto" not in auto.scores
    assert auto.chosen.name == max(auto.scores, key=auto.scores.get) or \
        round(auto.scores[auto.chosen.name], 3) == round(max(auto.scores.values()), 3)
    assert auto.chosen.name == "select"  # the noise member is dropped


@pytest.fixture(scope="module")
def fold_run(tmp_path_factory, synthetic_root):
    out = tmp_path_factory.mktemp("folds") / "weights"
    p = run_script("train_all.py", "--data", synthetic_root, "--models", "resnet10t", "--folds", "3", "--epochs", "1",
                   "--img-size", "64", "--recipe", "modern", "--no-pretrained", "--no-export", "--out", out, "--quiet",
                   cwd=out.parent)
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def test_folds_run_writes_k_members_and_out_of_fold_predictions(fold_run, synthetic_root):
    members = finished_members(fold_run)
    assert [m.name for m in members] == [f"resnet10t-fold{k}" for k in range(3)]
    ds = load_dataset(synthetic_root)
    labelled = ds.train[ds.train["label"].notna()]
    oof = pd.read_csv(fold_run / "oof_predictions.csv", dtype={"id": str})
    assert sorted(oof["id"]) == sorted(labelled["id"].unique())  # every labelled study once
    assert oof["resnet10t"].notna().all() and oof["resnet10t"].between(0, 1).all()
    cfg = json.loads((members[1] / "config.json").read_text())["training"]
    assert (cfg["folds"], cfg["fold"], cfg["recipe"], cfg["optimizer"]) == (3, 1, "modern", "adamw")
    assert "Cross-validated" in (fold_run / "leaderboard.md").read_text()


def test_out_of_fold_table_leaves_out_a_backbone_whose_fold_lost_its_predictions(fold_run, tmp_path):
    from zoo.run import out_of_fold

    run = tmp_path / "run"
    shutil.copytree(fold_run, run, ignore=shutil.ignore_patterns("checkpoint"))
    for k in range(3):  # a second backbone's folds, one of which has no val_predictions.csv
        shutil.copytree(run / f"resnet10t-fold{k}", run / f"copy-fold{k}")
    (run / "copy-fold1" / "val_predictions.csv").unlink()
    df, table = out_of_fold(run)
    assert list(df.columns) == ["id", "label", "resnet10t"] and "resnet10t" in table and "copy" not in table


def test_fold_members_vote_as_one_group_fitted_on_out_of_fold_predictions(fold_run, synthetic_root):
    ens = Ensemble([Member(d.name, d) for d in finished_members(fold_run)], method="auto")
    assert ens.group_names == ["resnet10t"] and len(ens.groups[0].members) == 3
    val = ens.validation_studies()
    oof = pd.read_csv(fold_run / "oof_predictions.csv", dtype={"id": str})
    assert len(val) == len(oof)  # the group's validation = its out-of-fold predictions
    scores = pd.DataFrame({"resnet10t-fold0": [0.2, 0.8], "resnet10t-fold1": [0.4, 0.6],
                           "resnet10t-fold2": [0.3, np.nan]})
    assert np.allclose(ens.with_groups(scores)["resnet10t"], [0.3, 0.7])
    assert np.allclose(ens.combine(scores), [0.3, 0.7])  # one group: the ensemble is the fold mean


def test_predict_with_fold_members_writes_group_columns(fold_run, synthetic_root, tmp_path):
    out = tmp_path / "pred.csv"
    p = run_script("predict.py", "--data", synthetic_root, "--models", fold_run, "-output", out, "--evaluate",
                   "--quiet", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    ev = pd.read_csv(tmp_path / "pred_studies.csv") if (tmp_path / "pred_studies.csv").exists() else None
    df = pd.read_csv(out)
    assert len(df) and df.iloc[:, -1].between(0, 1).all()
    if ev is not None:
        assert "resnet10t" in ev.columns


def test_budget_plan_fits_the_budget_and_keeps_given_flags(monkeypatch):
    speeds = {"resnet10t": 0.01, "regnetx_002": 0.02, "regnety_002": 0.03}  # s per training image at 256 px
    monkeypatch.setattr(budget, "measure", lambda cfg: (speeds[cfg.backbone] * (cfg.img_size / 256) ** 2,
                                                        speeds[cfg.backbone] / 3 * (cfg.img_size / 256) ** 2))
    modern, base = RECIPES["modern"], TrainConfig()
    p = budget.plan(20, modern, base, 800, say=lambda m: None)
    assert p.models and p.epochs >= modern.budget["min_epochs"] and p.estimate_s <= 20 * 60 * budget.SAFETY + 1e-6
    small = budget.plan(2, modern, base, 800, say=lambda m: None)
    assert small.estimate_s <= p.estimate_s and (small.img_size < p.img_size or len(small.models) < len(p.models)
                                                 or small.folds < p.folds)
    kept = budget.plan(20, modern, base, 800, fixed=budget.Fixed(models=["regnetx_002"], img_size=128, folds=2),
                       say=lambda m: None)
    assert (kept.models, kept.img_size, kept.folds) == (["regnetx_002"], 128, 2)
    seed = budget.plan(20, RECIPES["seed"], base, 800, fixed=budget.Fixed(models=["resnet10t"]), say=lambda m: None)
    assert seed.img_size == 512 and seed.folds == 1 and 1 <= seed.epochs <= 20
    with pytest.raises(ValueError):
        budget.plan(0, modern, base, 800)


def test_budget_measure_is_positive_and_finite():
    t_train, t_val = budget.measure(TrainConfig(backbone="resnet10t", img_size=64, device="cpu", batch_size=8))
    assert 0 < t_val < t_train < 5 and math.isfinite(t_train)


def test_train_all_budget_says_what_it_chose(tmp_path, synthetic_root):
    p = run_script("train_all.py", "--data", synthetic_root, "--budget-minutes", "0.5", "--models", "resnet10t",
                   "--img-size", "64", "--no-pretrained", "--no-export", "--out", tmp_path / "w", "--quiet",
                   cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "budget: budget 0 min" not in p.stdout and "budget:" in p.stdout and "resnet10t" in p.stdout
    assert finished_members(tmp_path / "w")


def test_pretrained_is_the_default_with_data_and_falls_back_at_once_offline(trained_run, monkeypatch):
    import socket
    import time

    from zoo.hub import hub_reachable

    t0 = time.perf_counter()
    assert hub_reachable() == (False, "HF_HUB_OFFLINE is set")  # tests run offline (conftest)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)

    def unreachable(address, timeout):
        assert timeout <= 3  # never a long network wait
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    ok, why = hub_reachable()
    assert not ok and "not reachable within 3 s" in why and time.perf_counter() - t0 < 1
    # the end-to-end run was given --data and no --pretrained flag: it said loudly that it starts from random init
    assert "RANDOM INIT" in trained_run["proc"].stderr


def test_bone_zoo_list_names_every_recipe_and_combiner(capsys):
    from zoo.cli import main
    from zoo.combiners import list_combiners

    assert main(["list", "resnet10t"]) == 0
    out = capsys.readouterr().out
    assert all(f"{r}:" in out for r in RECIPES) and all(f"{c}:" in out for c in list_combiners())
