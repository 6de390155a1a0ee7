"""Config resolved once (issue 20): defaults <- recipe <- flags given <- planner, frozen; flags generated from the
fields; optimizer and schedule from timm's factories with the original schedules; one precision and device resolver."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from zoo import budget
from zoo.cli import train as cli
from zoo.config import TrainConfig, flag_fields, resolve, unset_by_default
from zoo.optim import LrSchedule, build_optimizer
from zoo.recipes import RECIPES

ARGV = ["--data", "D", "--models", "a", "b*", "--recipe", "modern", "--epochs", "3", "--img-size", "64", "--lr", "3e-4",
        "--no-hflip", "--pretrained", "--head-hidden", "32", "16", "--mixed-precision", "no", "--compile",
        "--folds", "3", "--calibration-fraction", "0", "--cache-dir", "", "--quiet", "--seed", "2",
        "--grad-accum", "2", "--micro-batch", "4", "--weight-decay", "0.01", "--optimizer", "adamw",
        "--scheduler", "cosine", "--warmup-epochs", "0.5", "--ema-decay", "0.99", "--budget-minutes", "5",
        "--cache-max-gb", "1.5", "--device", "cpu", "--workers", "0", "--batch-size", "8", "--resume",
        "--semi-supervised", "--pseudo-confidence", "0.8", "--push-to-hub", "o/n", "--public", "--no-pretrained",
        "--log-with", "tensorboard", "mlflow", "--project-dir", "P"]
# what the hand-written parser before issue 20 gave for [] and for ARGV (recorded on that code)
OLD_DEFAULTS = {
    'batch_size': 16, 'brightness': None, 'budget_minutes': None, 'cache_dir': None, 'cache_max_gb': None,
    'calibration_fraction': None, 'compile': False, 'contrast': None, 'crop_scale': None, 'data': None,
    'device': 'auto', 'dropout': 0.3, 'ema_decay': None, 'epochs': None, 'folds': None, 'gamma': None,
    'gamma_jitter': None, 'grad_accum': 1, 'head_hidden': [1024, 512], 'hflip': None, 'img_size': None,
    'include_study_ids': False, 'label_smoothing': None, 'list_models': False, 'lr': None, 'micro_batch': 0,
    'mixed_precision': 'auto', 'mixup': None, 'models': None, 'optimizer': None, 'out': 'weights', 'patience': 0,
    'pos_weight': None, 'pretrained': None, 'pretrained_weights': None, 'private': False, 'pseudo_confidence': 0.9,
    'public': False, 'push_to_hub': None, 'quiet': False, 'recipe': None, 'resume': False, 'revision': None,
    'rotation': None, 'scheduler': None, 'seed': 0, 'semi_supervised': False, 'step_size': None,
    'synthetic_studies': 320, 'translate': None, 'val_fraction': 0.2, 'warmup_epochs': None, 'weight_decay': None,
    'workers': -1,
    # issue 23's tracking flags, recorded on the hand-written parser of branch gpu (before issue 20's merge)
    'log_with': None, 'project_dir': None}
# the flags added after that recording, by TrainConfig fields (issue 24: --boxes, --keep): what they parse to
NEW_DEFAULTS = {'boxes': None, 'box_weight': 10.0, 'box_warmup': 0.0, 'keep': 'auto'}
OLD_ARGV = {
    **OLD_DEFAULTS, 'batch_size': 8, 'budget_minutes': 5.0, 'cache_dir': '', 'cache_max_gb': 1.5,
    'calibration_fraction': 0.0, 'compile': True, 'data': 'D', 'device': 'cpu', 'ema_decay': 0.99, 'epochs': 3,
    'folds': 3, 'grad_accum': 2, 'head_hidden': [32, 16], 'hflip': False, 'img_size': 64, 'lr': 0.0003,
    'micro_batch': 4, 'mixed_precision': 'no', 'models': ['a', 'b*'], 'optimizer': 'adamw', 'pretrained': False,
    'pseudo_confidence': 0.8, 'public': True, 'push_to_hub': 'o/n', 'quiet': True, 'recipe': 'modern',
    'resume': True, 'scheduler': 'cosine', 'seed': 2, 'semi_supervised': True, 'warmup_epochs': 0.5,
    'weight_decay': 0.01, 'workers': 0, 'log_with': ['tensorboard', 'mlflow'], 'project_dir': 'P'}
# lr at each of 12 epochs x 3 optimizer steps of the modern schedule (AdamW 1e-3, 1 warm-up epoch, cosine), recorded
# on the code before issue 20 (torch LambdaLR over zoo.train.warmup_cosine)
OLD_MODERN_LRS = [
    0.000333333333333, 0.000666666666667, 0.001, 0.001, 0.000997758601674, 0.000991054705145, 0.000979949021939,
    0.000964542126843, 0.000944973547084, 0.000921420498751, 0.000894096281898, 0.000863248348862, 0.000829156063303,
    0.000792128170238, 0.0007525, 0.000710630431436, 0.000666898641842, 0.000621700673077, 0.000575445844945,
    0.000528553048333, 0.000481446951667, 0.000434554155055, 0.000388299326923, 0.000343101358158, 0.000299369568564,
    0.0002575, 0.000217871829762, 0.000180843936697, 0.000146751651138, 0.000115903718102, 8.85795012486e-05,
    6.50264529158e-05, 4.5457873157e-05, 3.00509780608e-05, 1.8945294855e-05, 1.22413983263e-05]


def _args(*argv: str):
    return cli.get_args_parser().parse_args(list(argv))


def test_train_flags_parse_as_the_hand_written_parser_did():
    # issue 21 added one flag, --export/--no-export (default on; its hand-written form on the old parser, branch ov)
    assert vars(_args()) == {**OLD_DEFAULTS, **NEW_DEFAULTS, "export": True}
    # the one deliberate change: one precision vocabulary, so Accelerate's "no" is read as its alias fp32
    assert vars(_args(*ARGV)) == {**OLD_ARGV, **NEW_DEFAULTS, "mixed_precision": "fp32", "export": True}
    assert _args("--no-export").export is False
    boxes = vars(_args("--boxes", "b.coco.json", "--box-weight", "0.5", "--box-warmup", "2"))
    assert boxes == {**OLD_DEFAULTS, "boxes": "b.coco.json", "box_weight": 0.5, "box_warmup": 2.0, "keep": "auto",
                     "export": True}


def test_every_recipe_value_is_a_flag_that_defaults_to_unset():
    """A recipe value can only lose to a flag the user gave, never to a parser default."""
    flags = {f.name: f for f in flag_fields()}
    for r in RECIPES.values():
        assert all(k in flags and unset_by_default(flags[k]) for k in r.values), r.name


def test_help_shows_each_recipes_values_from_the_recipes(monkeypatch):
    text = cli.get_args_parser().format_help()
    assert "seed 20, modern 30, synthetic 3" in " ".join(text.split())
    monkeypatch.setitem(RECIPES["modern"].values, "epochs", 77)
    assert "seed 20, modern 77, synthetic 3" in " ".join(cli.get_args_parser().format_help().split())


def test_config_is_resolved_once_frozen_and_a_given_flag_beats_the_recipe():
    args = _args("--recipe", "modern", "--lr", "3e-4", "--no-hflip")
    a, b = cli.config_for(args, "resnet10t"), cli.config_for(args, "resnet10t")
    assert a == b and a.lr == 3e-4 and a.hflip is False and a.optimizer == "adamw" and a.recipe == "modern"
    assert vars(args)["lr"] == 3e-4 and args.epochs is None  # resolving read args, wrote nothing into them
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.lr = 1.0
    assert dataclasses.replace(a, fold=2).fold == 2 and a.fold == 0  # derived configs are new ones
    # the synthetic recipe is what main() used to write into args for the built-in data
    syn = resolve("synthetic", {}, backbone="resnet10t")
    assert (syn.epochs, syn.img_size, syn.lr, syn.pretrained, syn.optimizer, syn.step_size) == (
        3, 96, 1e-3, False, "adam", 5)


def test_members_of_a_run_are_derived_from_one_resolved_config():
    base = resolve("seed", {"lr": 2e-3}, backbone="a", folds=2)
    runs = cli.member_runs(base, ["a", "b"])
    assert [n for n, _ in runs] == ["a-fold0", "a-fold1", "b-fold0", "b-fold1"]
    assert all(c == dataclasses.replace(base, backbone=n.split("-")[0], fold=int(n[-1])) for n, c in runs)


def _lrs(cfg: TrainConfig, epochs: int, steps: int) -> list[float]:
    """The learning rate at every optimizer step, stepped as zoo.train.Trainer steps the schedule."""
    model = torch.nn.Linear(2, 1)
    opt = build_optimizer(cfg, model)
    sched = LrSchedule(cfg, opt, steps)
    out = []
    for epoch in range(1, epochs + 1):
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.after_update()
        sched.after_epoch(epoch)
    return out


def test_seed_recipe_is_exactly_adam_and_steplr_per_epoch():
    cfg = resolve("seed", {}, epochs=12)
    opt = build_optimizer(cfg, torch.nn.Linear(2, 1))
    assert type(opt) is torch.optim.Adam and len(opt.param_groups) == 1
    ref_opt = torch.optim.Adam(torch.nn.Linear(2, 1).parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ref = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=5, gamma=0.1)
    expected = []
    for _ in range(12):
        for _ in range(3):
            expected.append(ref_opt.param_groups[0]["lr"])
            ref_opt.step()
        ref.step()
    assert _lrs(cfg, 12, 3) == pytest.approx(expected, abs=1e-9, rel=0)
    assert expected[14] == pytest.approx(1e-4) and expected[15] == pytest.approx(1e-5)  # the step after 5 epochs


def test_modern_recipe_keeps_its_warmup_cosine_per_step():
    cfg = resolve("modern", {"epochs": 12})
    opt = build_optimizer(cfg, torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2)))
    assert type(opt) is torch.optim.AdamW and [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.05]
    assert _lrs(cfg, 12, 3) == pytest.approx(OLD_MODERN_LRS, abs=1e-9, rel=0)


class _Acc(SimpleNamespace):
    is_main_process, num_processes, device = True, 1, "cpu"


def test_budget_planner_choice_is_in_the_config_and_calibration_studies_do_not_train(monkeypatch):
    seen = {}
    monkeypatch.setattr(budget, "measure", lambda cfg: (0.01 * (cfg.img_size / 256) ** 2, 0.003))
    real_plan = budget.plan

    def plan(minutes, recipe, base, n_labelled, **kw):
        seen["n"] = n_labelled
        return real_plan(minutes, recipe, base, n_labelled, **kw)

    monkeypatch.setattr(budget, "plan", plan)
    n = 1000  # studies of one labelled image each: 0.2 of them (>= 150) is the default calibration split
    train = pd.DataFrame({"path": [f"{i}.png" for i in range(n)], "id": [str(i) for i in range(n)],
                          "part": "XR_HAND", "label": [i % 2 for i in range(n)]})
    base = resolve("modern", {"device": "cpu"}, backbone="resnet10t")
    models, cfg, acc = cli.budget_plan(3, base, SimpleNamespace(train=train), _Acc(), lambda *a, **k: None,
                                       budget.Fixed())
    assert seen["n"] == 800  # the calibration split is neither trained nor validated on (it was counted before)
    assert cfg == dataclasses.replace(base, backbone=models[0], img_size=cfg.img_size, folds=cfg.folds,
                                      epochs=cfg.epochs)
    assert cfg.img_size in RECIPES["modern"].budget["sizes"] and cfg.folds in RECIPES["modern"].budget["folds"]
    assert (base.img_size, base.folds, base.epochs) == (256, 1, 30)  # the planner made a new config
    kept = cli.budget_plan(3, base, SimpleNamespace(train=train), _Acc(), lambda *a, **k: None,
                           budget.Fixed(img_size=128, folds=2))[1]
    assert (kept.img_size, kept.folds) == (128, 2)


def test_one_device_resolver_and_one_precision_vocabulary():
    import zoo.inference
    import zoo.runtime
    from zoo.train import make_accelerator

    assert zoo.inference.resolve_device is zoo.runtime.resolve_device
    assert zoo.inference.resolve_precision is zoo.runtime.resolve_precision
    assert zoo.runtime.resolve_precision("no", torch.device("cpu")) == "fp32"
    acc = make_accelerator(TrainConfig(device="cpu", mixed_precision=_args("--mixed-precision", "no").mixed_precision))
    assert acc.device.type == "cpu" and acc.mixed_precision == "no"  # Accelerate's own name (config.json records fp32)
