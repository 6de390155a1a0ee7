"""What the hostile review of the issue-20 refactor found (fix20): a synthetic run trains as before whatever
--recipe says, older runs resume, older plugins register, one precision vocabulary on disk, flag types from the real
annotations, the run card's leaderboard rendered at push time, a broken member left out of the leaderboard, and an
older checkpoint refused with a message."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_script
from test_runs import _finished_member

from zoo.cli import train as cli
from zoo.config import TrainConfig, flag_fields

# fingerprint.json "config" of a member trained WITHOUT --data by the code before issue 20 (aebdf11: main() wrote
# the synthetic values into args, then config_for), for no flags, for --mixed-precision no, for --recipe modern
OLD_SYNTHETIC_FP = (
    {'backbone': 'resnet10t', 'epochs': 3, 'img_size': 96, 'batch_size': 16, 'recipe': 'seed', 'optimizer': 'adam',
    'lr': 0.001, 'weight_decay': 0.0, 'scheduler': 'step', 'step_size': 5, 'gamma': 0.1, 'warmup_epochs': 0.0,
    'ema_decay': 0.0, 'patience': 0, 'val_fraction': 0.2, 'calibration_fraction': None, 'seed': 0, 'pretrained':
    False, 'pretrained_weights': None, 'rotation': 30.0, 'hflip': True, 'translate': 0.1, 'crop_scale': 1.0,
    'brightness': 0.0, 'contrast': 0.0, 'gamma_jitter': 0.0, 'label_smoothing': 0.0, 'mixup': 0.0, 'folds': 1,
    'fold': 0, 'head_hidden': [1024, 512], 'dropout': 0.3, 'pos_weight': None, 'mean': 0.449, 'std': 0.226,
    'mixed_precision': 'auto', 'grad_accum': 1})
OLD_MODERN_NO_DATA_FP = (
    {'backbone': 'resnet10t', 'epochs': 3, 'img_size': 96, 'batch_size': 16, 'recipe': 'modern', 'optimizer':
    'adamw', 'lr': 0.001, 'weight_decay': 0.05, 'scheduler': 'cosine', 'step_size': 5, 'gamma': 0.1,
    'warmup_epochs': 1.0, 'ema_decay': 0.998, 'patience': 0, 'val_fraction': 0.2, 'calibration_fraction': None,
    'seed': 0, 'pretrained': False, 'pretrained_weights': None, 'rotation': 20.0, 'hflip': True, 'translate': 0.05,
    'crop_scale': 0.6, 'brightness': 0.2, 'contrast': 0.2, 'gamma_jitter': 0.2, 'label_smoothing': 0.1, 'mixup':
    0.0, 'folds': 1, 'fold': 0, 'head_hidden': [1024, 512], 'dropout': 0.3, 'pos_weight': None, 'mean': 0.449,
    'std': 0.226, 'mixed_precision': 'auto', 'grad_accum': 1})


def _args(*argv: str):
    return cli.get_args_parser().parse_args(list(argv))


# -- 1. without --data the synthetic speed values apply on top of any recipe ------------------------------------------
def test_a_recipe_without_data_trains_the_quick_synthetic_values_and_a_given_flag_still_wins():
    cfg = cli.config_for(_args("--recipe", "modern"), "resnet10t")
    assert (cfg.epochs, cfg.img_size, cfg.lr, cfg.pretrained) == (3, 96, 1e-3, False)
    assert cfg.recipe == "modern" and cfg.optimizer == "adamw" and cfg.ema_decay == 0.998  # the rest: the recipe
    assert cli.config_for(_args("--recipe", "modern", "--epochs", "5", "--pretrained"), "resnet10t").epochs == 5
    assert cli.config_for(_args("--recipe", "modern", "--pretrained"), "resnet10t").pretrained is True
    default = cli.config_for(_args(), "resnet10t")  # no --recipe: the seed's, named seed, as before issue 20
    assert (default.recipe, default.epochs, default.img_size, default.lr, default.optimizer) == ("seed", 3, 96, 1e-3,
                                                                                               "adam")
    real = cli.config_for(_args("--data", "D", "--recipe", "modern"), "resnet10t")
    assert (real.epochs, real.img_size) == (30, 256)  # with --data: the recipe's own values


def test_plan_run_without_data_resolves_the_old_synthetic_values(monkeypatch):
    """The real path (plan_run), data loading and the budget faked: 3 epochs / 96 px / lr 1e-3 / no ImageNet probe,
    and the budget planner keeps the synthetic size and epochs as given."""
    seen = {}
    monkeypatch.setattr(cli, "_load_data", lambda args, acc, say: (SimpleNamespace(train=None), Path("D")))
    monkeypatch.setattr(cli, "_pretrained_default", lambda cfg: pytest.fail("probed for ImageNet weights"))

    def budget_plan(minutes, base, dataset, acc, say, fixed):
        seen["fixed"] = fixed
        return ["resnet10t"], base, acc

    monkeypatch.setattr(cli, "budget_plan", budget_plan)
    run, _, _ = cli.plan_run(_args("--recipe", "modern", "--device", "cpu", "--budget-minutes", "1"))
    b = run.base
    assert (b.epochs, b.img_size, b.lr, b.pretrained, b.recipe) == (3, 96, 1e-3, False, "modern")
    assert (seen["fixed"].img_size, seen["fixed"].epochs) == (96, 3)


# -- 2. --resume of a pre-refactor synthetic run, and of --mixed-precision no ----------------------------------------
@pytest.mark.parametrize("argv, stored", [
    ([], OLD_SYNTHETIC_FP),
    (["--mixed-precision", "no"], {**OLD_SYNTHETIC_FP, "mixed_precision": "no"}),
    (["--recipe", "modern"], OLD_MODERN_NO_DATA_FP),
])
def test_resume_accepts_a_member_fingerprinted_by_the_code_before_issue_20(tmp_path, argv, stored):
    from zoo.checkpoint import FINGERPRINT_FILE, fingerprint, resume_changes

    data = {"sha256": "x", "images": 3, "root": "D"}
    member = _finished_member(tmp_path / "resnet10t", 0.8, predictions=False)
    (member / FINGERPRINT_FILE).write_text(json.dumps({"config": stored, "data": data}))
    assert resume_changes(member, fingerprint(cli.config_for(_args(*argv), "resnet10t"), data)) == []
    changed = resume_changes(member, fingerprint(cli.config_for(_args(*argv, "--epochs", "4"), "resnet10t"), data))
    assert changed == ["epochs 3 -> 4"]  # a real change is still refused
    bf16 = fingerprint(cli.config_for(_args(*argv, "--mixed-precision", "bf16"), "resnet10t"), data)
    assert resume_changes(member, bf16) == [f"mixed_precision {'fp32' if 'no' in argv else 'auto'!r} -> 'bf16'"]


# -- 3. plugins of the older decorator -------------------------------------------------------------------------------
def test_the_older_reshape_vit_keyword_registers_with_a_deprecation_warning():
    from zoo import register_backbone
    from zoo.backbones.vit import vit_reshape
    from zoo.registry import BACKBONES, get_backbone

    def old_plugin_vit():
        """A plugin written for the decorator before issue 20."""

    try:
        with pytest.warns(DeprecationWarning, match=r"reshape='vit'.*reshape_transform=zoo\.registry\.vit_reshape"):
            register_backbone(source="timm:vit_small_patch16_224", cam_layer="blocks.-1.norm1",
                              reshape="vit")(old_plugin_vit)
        spec = get_backbone("old_plugin_vit")
        assert spec.reshape_transform is vit_reshape and spec.reshape == "vit"
        assert get_backbone("vit_small_patch16_224").reshape == "vit" and get_backbone("resnet10t").reshape is None
        with pytest.raises(AttributeError):
            spec.reshape = None  # read-only
    finally:
        BACKBONES.unregister("old_plugin_vit")
    with pytest.raises(ValueError, match=r"reshape='swin'.*reshape_transform="):
        register_backbone(source="timm:resnet10t", cam_layer="layer4", reshape="swin")


# -- 4. one precision vocabulary in a member's files -------------------------------------------------------------
def test_an_older_config_json_precision_no_reads_as_fp32_on_the_card():
    from zoo.card import recipe_lines

    training = {**dataclasses.asdict(TrainConfig(backbone="resnet10t")), "mixed_precision": "no"}
    text = "\n".join(recipe_lines({"backbone": "resnet10t", "training": training}))
    assert "mixed precision fp32" in text and "mixed precision no" not in text


def test_a_member_trained_with_mixed_precision_no_records_fp32(tmp_path, synthetic_root):
    out = tmp_path / "w"
    proc = run_script("train_all.py", "--data", synthetic_root, "--models", "resnet10t", "--img-size", "48",
                      "--epochs", "1", "--head-hidden", "16", "--mixed-precision", "no", "--device", "cpu",
                      "--quiet", "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "resnet10t" / "config.json").read_text())["training"]["mixed_precision"] == "fp32"
    card = (out / "resnet10t" / "README.md").read_text()
    assert "mixed precision fp32" in card and "mixed precision no" not in card


# -- 5. flag types from the real annotations ---------------------------------------------------------------------
@dataclass
class _Kinds:
    a: int = 0
    b: float = 0.0
    c: str = ""
    d: bool = False
    e: int | None = None
    f: float | None = None
    g: str | None = None
    h: list[int] = field(default_factory=list)
    i: dict[str, int] = field(default_factory=dict)


def test_flag_types_come_from_the_real_annotations_and_an_unknown_one_is_an_error():
    from zoo.config import flag_type

    kinds = {f.name: f for f in dataclasses.fields(_Kinds)}
    assert [flag_type(_Kinds, kinds[k]) for k in "abcdefgh"] == [int, float, str, bool, int, float, str, int]
    with pytest.raises(TypeError, match=r"_Kinds\.i: no flag type"):
        flag_type(_Kinds, kinds["i"])


SAMPLES = {int: "3", float: "0.25", str: "x"}


def test_every_generated_train_flag_converts_to_its_fields_type():
    """A flag parses to the field's annotated type (an ``int | None`` field is an int, not a string)."""
    import typing

    from zoo.config import flag_type

    hints = typing.get_type_hints(TrainConfig)
    for f in flag_fields():
        flag = "--" + f.name.replace("_", "-")
        kind = flag_type(TrainConfig, f)
        if kind is bool:
            assert getattr(_args(flag), f.name) is True, f.name
            continue
        if "choices" in f.metadata:
            choice = f.metadata["choices"][-1]
            value = getattr(_args(flag, choice), f.name)
            assert value == ([choice] if f.metadata.get("nargs") else choice), f.name
            continue
        value = getattr(_args(flag, SAMPLES[kind]), f.name)
        expected = [kind(SAMPLES[kind])] if typing.get_origin(hints[f.name]) is list else kind(SAMPLES[kind])
        assert value == expected and type(value) is type(expected), f.name


# -- 6. the run card's leaderboard is rendered at push time ----------------------------------------------------------
@pytest.mark.parametrize("leaderboard_md", [None, "| member | val_auc |\n|---|---|\n| gone | 0.123 |\n"])
def test_a_push_renders_the_members_leaderboard_whatever_leaderboard_md_says_and_writes_nothing(tmp_path,
                                                                                                leaderboard_md):
    from zoo.hub import plan_push
    from zoo.run import write_results

    run = tmp_path / "run"
    _finished_member(run / "resnet10t", 0.8)
    write_results(run)
    if leaderboard_md is None:
        (run / "leaderboard.md").unlink()  # missing
    else:
        (run / "leaderboard.md").write_text(leaderboard_md)  # stale
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    card = plan_push(run, "org/run").files["README.md"].decode()
    assert "| resnet10t" in card and "| gone" not in card and "no leaderboard.md" not in card
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before


# -- 8. one broken config.json does not crash the end-of-training report ----------------------------------------
def test_a_member_with_a_broken_config_json_is_left_out_of_the_leaderboard_with_a_warning(tmp_path):
    from zoo import leaderboard

    _finished_member(tmp_path / "good", 0.8, predictions=False)
    bad = _finished_member(tmp_path / "bad", 0.9, predictions=False)
    (bad / "config.json").write_text("{not json")
    with pytest.warns(UserWarning, match=r"bad[/\\]config\.json: not valid JSON.*left out of the leaderboard"):
        board = leaderboard.collect(tmp_path)
    assert board["member"].tolist() == ["good"]



# -- 9. a checkpoint of an older bone-zoo is refused with a message -----------------------------------------------
def _checkpoint(tmp_path, cfg: TrainConfig):
    from zoo.checkpoint import Checkpoint
    from zoo.optim import LrSchedule, build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    opt = build_optimizer(cfg, model)
    sched = LrSchedule(cfg, opt, 3)
    ck = Checkpoint(tmp_path / "checkpoint")
    epoch = ck.save({"epoch": 1, "best_auc": 0.5, "best_epoch": 1, "train_time_s": 1.0}, model, opt, sched)
    return ck, epoch, model, opt, sched


def _rewrite_state(epoch: Path, **changes) -> None:
    meta = json.loads((epoch / "state.json").read_text())
    (epoch / "state.json").write_text(json.dumps({**meta, **changes}))


def test_resuming_an_older_checkpoint_whose_param_groups_do_not_fit_is_refused(tmp_path):
    from zoo.checkpoint import CheckpointMismatch

    ck, epoch, model, opt, sched = _checkpoint(tmp_path, TrainConfig(optimizer="adamw", weight_decay=0.0))
    assert ck.restore(model, opt, sched)["epoch"] == 1  # this version's own checkpoint restores
    meta = json.loads((epoch / "state.json").read_text())
    (group,) = meta["optimizer"]["param_groups"]  # timm: one group when there is no weight decay
    old = [{**group, "params": group["params"][:2], "weight_decay": 0.0},  # the code before issue 20: two
           {**group, "params": group["params"][2:], "weight_decay": 0.0}]
    _rewrite_state(epoch, optimizer={"param_groups": old})
    with pytest.raises(CheckpointMismatch, match=r"checkpoint from an older bone-zoo.*start a new --out or retrain"):
        ck.restore(model, opt, sched)


def test_resuming_an_older_steplr_state_into_timms_scheduler_is_refused(tmp_path):
    from zoo.checkpoint import CheckpointMismatch

    ck, epoch, model, opt, sched = _checkpoint(tmp_path, TrainConfig())  # seed: Adam + step
    ref = torch.optim.Adam(torch.nn.Linear(2, 1).parameters(), lr=1e-4)
    _rewrite_state(epoch, scheduler=torch.optim.lr_scheduler.StepLR(ref, step_size=5, gamma=0.1).state_dict())
    before = opt.param_groups[0]["lr"]
    with pytest.raises(CheckpointMismatch, match=r"older bone-zoo.*schedule"):
        ck.restore(model, opt, sched)
    assert opt.param_groups[0]["lr"] == before  # refused before anything was restored
