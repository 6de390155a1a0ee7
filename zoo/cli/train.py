"""Train a zoo of backbones with one head, one loss and one trainer; write member folders and a leaderboard.

  python train_all.py                                  # synthetic radiographs (generated once), a small zoo
  python train_all.py --data DIR --models 'regnet*'    # competition layout or MURA-v1.1, every RegNet
  accelerate launch --multi_gpu --num_processes 4 train_all.py --data DIR     # DDP on 4 GPUs
  torchrun --nproc_per_node 2 train_all.py --data DIR --device cpu             # DDP on CPU (gloo)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
import warnings
from dataclasses import fields
from pathlib import Path

from zoo import leaderboard
from zoo.atomic import write_text
from zoo.cli.push import add_privacy_flags
from zoo.config import OPTIMIZERS, PRECISIONS, SCHEDULERS, TrainConfig
from zoo.data import SyntheticSpec, ensure_synthetic, load_dataset, report_unreadable
from zoo.recipes import DEFAULT_RECIPE, RECIPES, describe_recipes, get_recipe

DEFAULT_MODELS = ["regnet_x_800mf", "regnety_016", "resnet50", "densenet169", "efficientnet_b0"]
QUICK_MODELS = ["regnetx_002", "resnet10t"]
SYNTHETIC_DIR = Path("data/synthetic")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        description=__doc__, add_help=add_help, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    a = p.add_argument
    a("--data", default=None, help="dataset folder: competition layout (train/, test/, train.csv) or MURA-v1.1. "
      f"Default: synthetic radiographs generated once into {SYNTHETIC_DIR}/")
    a("--models", nargs="+", default=None, metavar="NAME",
      help=f"backbones or wildcards ('regnet*'). Default: {' '.join(DEFAULT_MODELS)} with --data, "
      f"{' '.join(QUICK_MODELS)} on synthetic data. --list-models shows all")
    a("--list-models", action="store_true", help="print the registered backbones and exit")
    a("--recipe", choices=list(RECIPES), default=None, help="training preset; a flag given here overrides its value. "
      f"{describe_recipes()}. Default: {DEFAULT_RECIPE} with --data, seed (faster settings) on synthetic data")
    a("--budget-minutes", type=float, default=None, metavar="M", help="fit the zoo to M minutes of training on this "
      "machine: measures each candidate backbone's speed here, then picks backbones, image size, folds and epochs "
      "(flags you give are kept) and says what it chose")
    a("--folds", type=int, default=None, metavar="K", help="K-fold cross-validation: K members per backbone, every "
      "labelled study validated once; out-of-fold predictions go to OUT/oof_predictions.csv and fit the ensemble "
      "(default 1: one validation split)")
    a("--epochs", type=int, default=None, help="epochs per member (recipe: seed 20, modern 30; 3 on synthetic data)")
    a("--img-size", type=int, default=None, help="square input size in px (recipe: seed 512, modern 256; 96 on "
      "synthetic)")
    a("--batch-size", type=int, default=d.batch_size, help="batch size (default %(default)s)")
    a("--optimizer", choices=OPTIMIZERS, default=None, help="adam or adamw (recipe)")
    a("--lr", type=float, default=None, help="learning rate (recipe: seed 1e-4, modern 1e-3; 1e-3 on synthetic)")
    a("--weight-decay", type=float, default=None, help="weight decay (recipe)")
    a("--scheduler", choices=SCHEDULERS, default=None, help="step: StepLR per epoch; cosine: linear warm-up then "
      "cosine decay per step (recipe)")
    a("--step-size", type=int, default=None, help="StepLR step in epochs (recipe)")
    a("--gamma", type=float, default=None, help="StepLR factor (recipe)")
    a("--warmup-epochs", type=float, default=None, help="cosine schedule warm-up in epochs (recipe)")
    a("--ema-decay", type=float, default=None, help="weight EMA decay, validated and exported; 0 = off (recipe)")
    a("--patience", type=int, default=d.patience, help="early stop after N epochs without a better val AUC; 0 = off "
      "(default %(default)s)")
    a("--val-fraction", type=float, default=d.val_fraction, help="share of labelled studies held out for "
      "validation, split by study, without --folds (default %(default)s)")
    a("--calibration-fraction", type=float, default=None, metavar="F", help="share of the labelled studies held "
      "out of training and of every selection step (epoch, thresholds, calibrations, combiner), grouped by patient "
      "(else study) and stratified; each member predicts them (calibration_predictions.csv) and predict.py "
      "--triage certifies its error rate on them alone. 0 = off (--triage then gives no guarantee). Default: 0.2 "
      "when that holds at least 150 studies, else 0")
    a("--pretrained", action=argparse.BooleanOptionalAction, default=None,
      help="start from ImageNet weights (timm/torchvision). Default: on with --data when the weights are reachable "
      "(cached, or the Hub answers within seconds), else random init with a warning; off on synthetic data")
    a("--pretrained-weights", default=None, metavar="PATH",
      help="offline ImageNet weights: a .safetensors file, or a folder of <backbone>.safetensors files")
    a("--rotation", type=float, default=None, help="augmentation: max rotation in degrees (recipe)")
    a("--hflip", action=argparse.BooleanOptionalAction, default=None, help="augmentation: horizontal flip (recipe)")
    a("--translate", type=float, default=None, help="augmentation: max translation, fraction of the size (recipe)")
    a("--crop-scale", type=float, default=None, help="augmentation: random resized crop keeping at least this "
      "share of the area; 1 = off (recipe)")
    a("--brightness", type=float, default=None, help="augmentation: brightness jitter (recipe)")
    a("--contrast", type=float, default=None, help="augmentation: contrast jitter (recipe)")
    a("--gamma-jitter", type=float, default=None, help="augmentation: gamma jitter (recipe)")
    a("--label-smoothing", type=float, default=None, help="BCE label smoothing (recipe)")
    a("--mixup", type=float, default=None, help="mixup Beta(a, a) parameter; 0 = off (recipe)")
    a("--head-hidden", type=int, nargs="+", default=d.head_hidden, help="MLP head widths (default %(default)s)")
    a("--dropout", type=float, default=d.dropout, help="head dropout (default %(default)s)")
    a("--pos-weight", type=float, default=None, help="BCE positive weight (default: n_neg/n_pos of the train split)")
    a("--mixed-precision", choices=PRECISIONS, default=d.mixed_precision, help="auto: bf16 where native (GPUs that "
      "support it, CPUs with AVX512-BF16 or AMX), else none; fp16 (GPU only) is trained with loss scaling "
      "(default %(default)s)")
    a("--grad-accum", type=int, default=d.grad_accum, metavar="N", help="accumulate gradients over N batches per "
      "optimizer step (effective batch = batch size x N x processes) (default %(default)s)")
    a("--micro-batch", type=int, default=d.micro_batch, metavar="N", help="forward/backward N images at a time and "
      "accumulate to --batch-size (0 = auto: 8 on CPU, saves memory and time; the whole batch on GPU) "
      "(default %(default)s)")
    a("--compile", action="store_true", help="torch.compile the model (slow first epoch; default off)")
    a("--out", default="weights", help="run folder: one sub-folder per member + leaderboard; locked while a run "
      "trains into it (a second run on it is refused, naming the first) (default %(default)s)")
    a("--export", action=argparse.BooleanOptionalAction, default=d.export, help="write model.onnx and a static "
      "int8 model.int8.onnx beside each finished member, the int8 one calibrated and checked on the member's own "
      "validation images (predict.py --backend auto uses them); --no-export skips it (default: %(default)s)")
    a("--device", default=d.device, help="cuda, cuda:1, cpu, mps or auto (default %(default)s)")
    a("--workers", type=int, default=d.workers, help="DataLoader workers, -1 = auto (default %(default)s)")
    a("--cache-dir", default=None, help="decoded-image cache (default ~/.cache/bone-zoo/images; '' = in memory)")
    a("--cache-max-gb", type=float, default=None, help="bound of the decoded-image cache on disk, least recently "
      "used entries evicted (default: BONE_ZOO_CACHE_MAX_GB or 20)")
    a("--seed", type=int, default=d.seed, help="seed for the split, init, shuffling and augmentation "
      "(default %(default)s)")
    a("--resume", action="store_true", help="continue interrupted members from their checkpoint; skip finished ones. "
      "Refused, naming what changed, when a member was trained with other settings or other data (its "
      "fingerprint.json: the resolved config and a hash of image paths, sizes, times and labels)")
    a("--semi-supervised", action="store_true", help="use the unlabelled training studies: train, pseudo-label "
      "the ones the calibrated ensemble is confident about (soft targets), train again with them; round 1 is kept "
      "in OUT/round1/")
    a("--pseudo-confidence", type=float, default=0.9, help="with --semi-supervised: minimum max(p, 1-p) of the "
      "ensemble for a pseudo-label (default %(default)s)")
    a("--synthetic-studies", type=int, default=SyntheticSpec.n_train, help="training studies in the synthetic set "
      "(default %(default)s)")
    a("--push-to-hub", default=None, metavar="ORG/NAME", help="upload the run when it finishes: one model repo, "
      "a sub-folder per member, one commit (token from HF_TOKEN or `hf auth login`)")
    a("--revision", default=None, help="with --push-to-hub: branch to push to (created if missing)")
    add_privacy_flags(p, "with --push-to-hub: ")
    a("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    return p


def config_for(args: argparse.Namespace, backbone: str, fold: int = 0) -> TrainConfig:
    """TrainConfig defaults <- the recipe <- the flags given (a flag left at None keeps the recipe's value)."""
    names = {f.name for f in fields(TrainConfig)}
    recipe = get_recipe(args.recipe or "seed")
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return TrainConfig(**{**recipe.values, **values, "recipe": recipe.name, "backbone": backbone,
                          "folds": max(1, args.folds or 1), "fold": fold})


def member_runs(args: argparse.Namespace, models: list[str]) -> list[tuple[str, TrainConfig]]:
    """(member folder name, config) for each member: one per backbone, or ``NAME-foldK`` for K folds."""
    folds = max(1, args.folds or 1)
    if folds == 1:
        return [(name, config_for(args, name)) for name in models]
    return [(f"{name}-fold{k}", config_for(args, name, k)) for name in models for k in range(folds)]


def budget_plan(args: argparse.Namespace, dataset, acc, say, given: list[str] | None):
    """--budget-minutes: measure, choose, and write the choice into ``args`` (flags given stay); returns the backbones
    and the accelerator for the chosen settings. Under DDP the main process decides for everyone."""
    from accelerate.utils import broadcast_object_list

    from zoo.budget import plan
    from zoo.train import make_accelerator

    recipe = get_recipe(args.recipe)
    chosen = [None]
    if acc.is_main_process:
        n = int(dataset.train["label"].notna().sum())
        say(f"budget: measuring candidate backbones on this machine ({acc.device}) ...", flush=True)
        p = plan(args.budget_minutes, recipe, config_for(args, (given or recipe.budget["models"])[0]), n, models=given,
                 img_size=args.img_size, folds=args.folds, epochs=args.epochs,
                 say=lambda m: say(m, flush=True))
        chosen = [(p.models, p.img_size, p.folds, p.epochs)]
    if acc.num_processes > 1:
        broadcast_object_list(chosen)
    models, args.img_size, args.folds, args.epochs = chosen[0]
    return models, make_accelerator(config_for(args, models[0]))


def unloadable(args: argparse.Namespace) -> str | None:
    """Why a member of these sizes could be trained but never loaded (zoo.members bounds what a config may allocate),
    or None: refused before any training, not after hours of it."""
    from zoo.members import MAX_HEAD_LAYERS, MAX_HEAD_WIDTH, MAX_IMG_SIZE

    if args.img_size is not None and not 8 <= args.img_size <= MAX_IMG_SIZE:
        return f"--img-size {args.img_size}: members load from 8 to {MAX_IMG_SIZE} px only"
    hidden = args.head_hidden or []
    if len(hidden) > MAX_HEAD_LAYERS or any(not 1 <= h <= MAX_HEAD_WIDTH for h in hidden):
        return (f"--head-hidden {' '.join(map(str, hidden))}: members load with at most {MAX_HEAD_LAYERS} widths of "
                f"1 to {MAX_HEAD_WIDTH} only")
    return None


def main(args: argparse.Namespace) -> int:
    from zoo.registry import describe_backbones, resolve_backbones  # the registry imports PyTorch: not for --help

    if args.list_models:
        print(describe_backbones())
        return 0
    if (too_big := unloadable(args)) is not None:
        print(f"error: {too_big}", file=sys.stderr)
        return 2
    if args.cache_max_gb is not None:  # also the bound of the ensemble's decodes (--semi-supervised)
        os.environ["BONE_ZOO_CACHE_MAX_GB"] = str(args.cache_max_gb)
    synthetic = args.data is None
    if args.recipe is None:
        args.recipe = "seed" if synthetic else DEFAULT_RECIPE
    if synthetic:
        for k, v in {"epochs": 3, "img_size": 96, "lr": 1e-3, "pretrained": False}.items():
            if getattr(args, k) is None:
                setattr(args, k, v)
    from zoo.hub import ensure_study_id_salt
    from zoo.runlock import RunLocked, run_lock
    from zoo.train import make_accelerator  # PyTorch and Accelerate: only when training

    try:
        models = resolve_backbones(args.models or (QUICK_MODELS if synthetic else DEFAULT_MODELS))
        acc = make_accelerator(config_for(args, models[0]))  # one per process, shared by every member
    except (ValueError, KeyError, OSError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    main_proc = acc.is_main_process
    say = print if main_proc else (lambda *a, **k: None)
    if synthetic:
        say("=" * 78 + "\n  No --data given: training on SYNTHETIC radiographs (generated once into "
            f"{SYNTHETIC_DIR}/).\n  These numbers show the pipeline works; they say nothing about real X-rays.\n"
            + "=" * 78, flush=True)
        with acc.main_process_first():
            root = ensure_synthetic(SYNTHETIC_DIR, SyntheticSpec(n_train=args.synthetic_studies))
    else:
        root = Path(args.data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # notes are printed in the summary below
            dataset = load_dataset(root)
    except (ValueError, OSError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    say(dataset.summary(), flush=True)
    if args.pretrained is None:  # real data: ImageNet weights when they can be had, as the original used
        if args.pretrained_weights:
            args.pretrained = True
        else:
            from zoo.hub import hub_reachable

            args.pretrained, why = hub_reachable()
            if not args.pretrained:
                print(f"WARNING: ImageNet weights are not reachable ({why}): training from RANDOM INIT, which needs "
                      "more epochs and scores lower. Give --pretrained-weights DIR (NAME.safetensors files) to use "
                      "downloaded weights, or --no-pretrained to silence this.", file=sys.stderr, flush=True)
    if dataset.train["label"].notna().sum() == 0:
        print(f"error: {root}: no labelled training images (train.csv labels 0/1)", file=sys.stderr)
        return 2
    if args.budget_minutes is not None:
        try:
            models, acc = budget_plan(args, dataset, acc, say, models if args.models else None)
        except (ValueError, KeyError) as exc:
            print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
            return 2
    if acc.num_processes > 1:
        say(f"distributed: {acc.num_processes} processes ({acc.distributed_type}), mixed precision "
            f"{acc.mixed_precision}", flush=True)
    out = Path(args.out)
    with contextlib.ExitStack() as stack:
        refused = [None]
        if main_proc:  # one run per --out: a second one would delete this one's checkpoints
            try:
                stack.enter_context(run_lock(out, say=lambda m: print(m, file=sys.stderr, flush=True)))
                ensure_study_id_salt(out)
            except RunLocked as exc:
                refused = [str(exc)]
        if acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(refused)
        if refused[0]:
            print(f"error: {refused[0]}", file=sys.stderr)
            return 2
        try:
            return _train(args, out, models, acc, dataset, root, synthetic, say)
        except ResumeRefused as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2


class ResumeRefused(RuntimeError):
    """--resume over members trained with other settings or data; the message names what changed."""


def check_resume(run_dir: Path, runs: list[tuple[str, TrainConfig]], data: dict) -> None:
    """Before anything is trained: every member that --resume would continue or skip was trained from this config
    and data, else :class:`ResumeRefused` naming each member and what changed."""
    from zoo.checkpoint import fingerprint, resume_changes

    bad = {name: ch for name, cfg in runs if (ch := resume_changes(run_dir / name, fingerprint(cfg, data)))}
    if bad:
        listed = "\n".join(f"  {run_dir / n}: {'; '.join(ch)}" for n, ch in bad.items())
        raise ResumeRefused(f"--resume refused: {len(bad)} member(s) were trained with other settings or data than "
                            f"this command gives:\n{listed}\nGive the flags and --data they were trained with, run "
                            "without --resume to train them afresh (their files are replaced), or use another --out")


def _train(args, out: Path, models: list[str], acc, dataset, root: Path, synthetic: bool, say) -> int:
    """Train every member into ``out`` (its lock held), then the leaderboard and the optional push."""
    from zoo.checkpoint import FINGERPRINT_FILE, data_fingerprint, fingerprint
    from zoo.train import Trainer

    main_proc = acc.is_main_process
    failed: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    t0 = time.perf_counter()

    def train_round(run_dir: Path, pseudo=None, record=None, label: str = "") -> bool:
        """Every member into ``run_dir``; False when interrupted (Ctrl-C)."""
        images = None
        runs = member_runs(args, models)
        data = data_fingerprint(dataset.train, root, pseudo)
        if args.resume:
            check_resume(run_dir, runs, data)
        for i, (name, cfg) in enumerate(runs, 1):
            say(f"\n[{i}/{len(runs)}{label}] {name}: {cfg.epochs} epochs at {cfg.img_size}px on {acc.device}, "
                f"recipe {cfg.recipe}" + (f", fold {cfg.fold + 1}/{cfg.folds}" if cfg.folds > 1 else ""), flush=True)
            try:
                trainer = Trainer(cfg, dataset, run_dir / name, images=images, accelerator=acc, pseudo=pseudo,
                                  pseudo_record=record)
                trainer.checkpoint.fingerprint = fingerprint(cfg, data)  # saved with every epoch
                result = trainer.fit(resume=args.resume)
                if main_proc and not result.get("skipped"):  # what the finished member was trained from
                    write_text(run_dir / name / FINGERPRINT_FILE, json.dumps(trainer.checkpoint.fingerprint))
                images = trainer.images  # decoded once, shared by every member at this size
                unreadable.update(trainer.unreadable)
                if result.get("skipped"):
                    say(f"[{name}] already trained, skipped (val AUC {result['val_auc']:.4f})", flush=True)
                else:
                    say(f"[{name}] val AUC {result['val_auc']:.4f}  kappa {result['val_kappa']:.3f}", flush=True)
            except KeyboardInterrupt:
                print(f"\ninterrupted during {name}; `--resume` continues from its last epoch", file=sys.stderr)
                return False
            except Exception as exc:  # one failing member must not stop the zoo
                failed[name] = f"{type(exc).__name__}: {exc}"
                print(f"[{name}] FAILED: {failed[name]}", file=sys.stderr, flush=True)
                if not args.quiet:
                    traceback.print_exc()
        return True

    if not args.semi_supervised:
        if not train_round(out):
            return 130
    else:
        from zoo.ensemble import Ensemble
        from zoo.members import finished_members
        from zoo.semisupervised import pseudo_labels

        if not train_round(out / "round1", label=", round 1"):
            return 130
        unlabelled = dataset.train[dataset.train["label"].isna()]
        ens = Ensemble.from_paths([str(d) for d in finished_members(out / "round1")], device=args.device)
        pseudo, record = pseudo_labels(ens, unlabelled, args.pseudo_confidence, args.cache_dir)
        say(f"\nsemi-supervised: {record['pseudo_labelled_studies']} of {record['unlabelled_studies']} unlabelled "
            f"studies pseudo-labelled by the round-1 ensemble (confidence >= {args.pseudo_confidence}); round 2 "
            f"trains with them (round 1 stays in {out / 'round1'}/)", flush=True)
        if not train_round(out, pseudo, record, label=", round 2"):
            return 130
    if not main_proc:
        return 1 if failed else 0
    report_unreadable(unreadable)
    board = leaderboard.write(out)
    print(f"\nLeaderboard ({out}/leaderboard.md, {time.perf_counter() - t0:.0f}s"
          f"{', SYNTHETIC data' if synthetic else ''}):")
    print(leaderboard.to_markdown(board) if not board.empty else "(no finished members)")
    if args.push_to_hub and not board.empty:
        from zoo.hub import PushError, push_run

        try:
            url = push_run(out, args.push_to_hub, private=not args.public, revision=args.revision,
                           include_study_ids=args.include_study_ids, say=lambda m: print(m, file=sys.stderr))
        except PushError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"pushed {out} to {args.push_to_hub} ({'public' if args.public else 'private'}): {url}")
    if failed:
        print("\nFailed members:\n" + "\n".join(f"  {k}: {v}" for k, v in failed.items()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
