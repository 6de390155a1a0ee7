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
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from zoo import leaderboard
from zoo.atomic import write_text
from zoo.cli.push import add_privacy_flags
from zoo.config import TrainConfig, add_flags, config_flags, resolve
from zoo.data import SyntheticSpec, ensure_synthetic, load_dataset, report_unreadable
from zoo.recipes import DEFAULT_RECIPE, RECIPES, SYNTHETIC_RECIPE, SYNTHETIC_SPEED, describe_recipes, get_recipe

DEFAULT_MODELS = ["regnet_x_800mf", "regnety_016", "resnet50", "densenet169", "efficientnet_b0"]
QUICK_MODELS = ["regnetx_002", "resnet10t"]
SYNTHETIC_DIR = Path("data/synthetic")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The run's own flags, then one flag per TrainConfig field (zoo.config.add_flags), then output and Hub."""
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
      f"{describe_recipes()}. Default: {DEFAULT_RECIPE} with --data, {SYNTHETIC_RECIPE} without; without --data "
      f"{', '.join(f'{k} {v}' for k, v in SYNTHETIC_SPEED.items())} apply on top of any recipe")
    a("--budget-minutes", type=float, default=None, metavar="M", help="fit the zoo to M minutes of training on this "
      "machine: measures each candidate backbone's speed here, then picks backbones, image size, folds and epochs "
      "(flags you give are kept) and says what it chose")
    add_flags(p)
    a("--out", default="weights", help="run folder: one sub-folder per member + leaderboard; locked while a run "
      "trains into it (a second run on it is refused, naming the first) (default %(default)s)")
    a("--resume", action="store_true", help="continue interrupted members from their checkpoint; skip finished ones. "
      "Refused, naming what changed, when a member was trained with other settings or other data (its "
      "fingerprint.json: the resolved config, a hash of image paths, sizes, times and labels, and the --boxes file's "
      "hash with --box-weight and --box-warmup)")
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
    return p


def config_for(args: argparse.Namespace, backbone: str, fold: int = 0) -> TrainConfig:
    """The resolved config of one member for parsed ``args``, the one path :func:`plan_run` takes too (before the
    planner): TrainConfig defaults <- the recipe (``--recipe``; else modern with --data, seed without) <-
    without --data, the synthetic recipe's quick values (SYNTHETIC_SPEED, on top of any recipe) <- the flags given."""
    return resolve(_recipe(args), _flags(args), backbone=backbone, folds=max(1, args.folds or 1), fold=fold)


def _recipe(args: argparse.Namespace) -> str:
    return args.recipe or (SYNTHETIC_RECIPE if args.data is None else DEFAULT_RECIPE)


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The config values of ``args`` above the recipe: on synthetic data SYNTHETIC_SPEED, then the flags given."""
    given = config_flags(args)
    return {**SYNTHETIC_SPEED, **given} if args.data is None else given


def member_runs(base: TrainConfig, models: list[str]) -> list[tuple[str, TrainConfig]]:
    """(member folder name, config) for each member of ``base``'s run: one per backbone, or ``NAME-foldK`` for K
    folds; each config is ``base`` with its backbone and fold."""
    if base.folds == 1:
        return [(name, replace(base, backbone=name, fold=0)) for name in models]
    return [(f"{name}-fold{k}", replace(base, backbone=name, fold=k)) for name in models for k in range(base.folds)]


class Refused(Exception):
    """A run refused before anything is trained; its message is the one error line."""


def _message(exc: BaseException) -> str:
    return exc.args[0] if exc.args else str(exc)


@dataclass(frozen=True)
class RunPlan:
    """What a run trains, decided once before any training: the backbones, the resolved config (of the first
    backbone's first fold; :func:`member_runs` derives every member's) and the data."""

    models: list[str]
    base: TrainConfig
    dataset: Any
    root: Path
    synthetic: bool


def budget_plan(minutes: float, base: TrainConfig, dataset, acc, say, fixed):
    """--budget-minutes: measure and choose (``fixed``, a :class:`zoo.budget.Fixed`, holds the flags given, kept);
    returns the backbones, ``base`` with the choice, and the accelerator for it. Under DDP the main process decides
    for everyone."""
    from accelerate.utils import broadcast_object_list

    from zoo.budget import plan, trainable_images
    from zoo.train import make_accelerator

    recipe = get_recipe(base.recipe)
    chosen = [None]
    if acc.is_main_process:
        say(f"budget: measuring candidate backbones on this machine ({acc.device}) ...", flush=True)
        start = replace(base, backbone=(fixed.models or recipe.budget["models"])[0])
        p = plan(minutes, recipe, start, trainable_images(dataset.train, base), fixed=fixed,
                 say=lambda m: say(m, flush=True))
        chosen = [(p.models, p.img_size, p.folds, p.epochs)]
    if acc.num_processes > 1:
        broadcast_object_list(chosen)
    models, img_size, folds, epochs = chosen[0]
    cfg = replace(base, backbone=models[0], img_size=img_size, folds=folds, epochs=epochs)
    return models, cfg, make_accelerator(cfg)


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


def unusable_boxes(args: argparse.Namespace) -> str | None:
    """Why the ``--boxes`` file cannot be read as COCO annotations, or None: a bad file stops the run before anything
    trains."""
    if not args.boxes:
        return None
    if getattr(args, "compile", False):  # the box loss's Grad-CAM needs a double backward, which compiled graphs lack
        return "--boxes cannot train a --compile'd model (its CAM loss needs a double backward); drop --compile"
    from zoo.localisation import load_annotations

    try:
        load_annotations(args.boxes, flag="--boxes")
    except (ImportError, OSError, ValueError) as exc:
        return str(exc)
    return None


def main(args: argparse.Namespace) -> int:
    """Plan (config, data, budget), then train every member under the run lock, then report."""
    from zoo.registry import describe_backbones  # the registry imports PyTorch: not for --help

    if args.list_models:
        print(describe_backbones())
        return 0
    try:
        if (why := unloadable(args) or unusable_boxes(args)) is not None:
            raise Refused(why)
        run, acc, say = plan_run(args)
        with contextlib.ExitStack() as stack:
            _lock(Path(args.out), acc, stack)
            return _train(args, run, acc, say)
    except (Refused, ResumeRefused) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def plan_run(args: argparse.Namespace):
    """The :class:`RunPlan` of ``args``, the accelerator it trains on and the main process's ``say``; the config is
    resolved here, once: defaults <- recipe <- the flags given <- the data's rules and the budget planner."""
    from zoo.registry import resolve_backbones
    from zoo.train import make_accelerator  # PyTorch and Accelerate: only when training

    synthetic = args.data is None
    flags, recipe = _flags(args), _recipe(args)
    try:
        models = resolve_backbones(args.models or (QUICK_MODELS if synthetic else DEFAULT_MODELS))
        base = config_for(args, models[0])
        acc = make_accelerator(base)  # one per process, shared by every member
    except (ValueError, KeyError, OSError) as exc:
        raise Refused(_message(exc)) from exc
    say = print if acc.is_main_process else (lambda *a, **k: None)
    dataset, root = _load_data(args, acc, say)
    if "pretrained" not in flags and "pretrained" not in get_recipe(recipe).values:
        base = replace(base, pretrained=_pretrained_default(base))
    if args.budget_minutes is not None:
        from zoo.budget import Fixed

        fixed = Fixed(models if args.models else None, flags.get("img_size"), args.folds, flags.get("epochs"))
        try:
            models, base, acc = budget_plan(args.budget_minutes, base, dataset, acc, say, fixed)
        except (ValueError, KeyError) as exc:
            raise Refused(_message(exc)) from exc
    if acc.num_processes > 1:
        say(f"distributed: {acc.num_processes} processes ({acc.distributed_type}), mixed precision "
            f"{acc.mixed_precision}", flush=True)
    return RunPlan(models, base, dataset, root, synthetic), acc, say


def _load_data(args: argparse.Namespace, acc, say):
    """(the dataset, its folder): ``--data``, or the synthetic set (generated once, by the main process first)."""
    if args.data is None:
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
        raise Refused(_message(exc)) from exc
    say(dataset.summary(), flush=True)
    if dataset.train["label"].notna().sum() == 0:
        raise Refused(f"{root}: no labelled training images (train.csv labels 0/1)")
    return dataset, root


def _pretrained_default(cfg: TrainConfig) -> bool:
    """No --pretrained flag and none in the recipe (real data): ImageNet weights when they can be had, as the
    original used; else random init with a warning."""
    if cfg.pretrained_weights:
        return True
    from zoo.hub import hub_reachable

    reachable, why = hub_reachable()
    if not reachable:
        print(f"WARNING: ImageNet weights are not reachable ({why}): training from RANDOM INIT, which needs "
              "more epochs and scores lower. Give --pretrained-weights DIR (NAME.safetensors files) to use "
              "downloaded weights, or --no-pretrained to silence this.", file=sys.stderr, flush=True)
    return reachable


def _lock(out: Path, acc, stack: contextlib.ExitStack) -> None:
    """One run per --out (a second one would delete this one's checkpoints): the main process takes the lock for
    the ``stack``'s life; every process learns whether it was refused."""
    from zoo.run import ensure_study_id_salt
    from zoo.runlock import RunLocked, run_lock

    refused = [None]
    if acc.is_main_process:
        try:
            stack.enter_context(run_lock(out, say=lambda m: print(m, file=sys.stderr, flush=True)))
            ensure_study_id_salt(out)
        except RunLocked as exc:
            refused = [str(exc)]
    if acc.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(refused)
    if refused[0]:
        raise Refused(refused[0])


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


@dataclass
class ZooRun:
    """Training the members of a :class:`RunPlan` on one accelerator, round by round; what failed and what could not
    be read is collected for the report."""

    args: argparse.Namespace
    plan: RunPlan
    acc: Any
    say: Any
    failed: dict[str, str] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)

    def round(self, run_dir: Path, pseudo=None, record=None, label: str = "") -> bool:
        """Every member into ``run_dir``; False when interrupted (Ctrl-C)."""
        from zoo.checkpoint import CheckpointMismatch, data_fingerprint

        images = None
        runs = member_runs(self.plan.base, self.plan.models)
        data = data_fingerprint(self.plan.dataset.train, self.plan.root, pseudo)
        if self.args.resume:
            check_resume(run_dir, runs, data)
        for i, (name, cfg) in enumerate(runs, 1):
            self.say(f"\n[{i}/{len(runs)}{label}] {name}: {cfg.epochs} epochs at {cfg.img_size}px on "
                     f"{self.acc.device}, recipe {cfg.recipe}" + (f", fold {cfg.fold + 1}/{cfg.folds}"
                                                                  if cfg.folds > 1 else ""), flush=True)
            try:
                images = self.member(run_dir / name, cfg, data, images, pseudo, record)
            except KeyboardInterrupt:
                print(f"\ninterrupted during {name}; `--resume` continues from its last epoch", file=sys.stderr)
                return False
            except CheckpointMismatch as exc:  # --resume of an older bone-zoo's checkpoint: the run is refused
                raise ResumeRefused(str(exc)) from None
            except Exception as exc:  # one failing member must not stop the zoo
                self.failed[name] = f"{type(exc).__name__}: {exc}"
                print(f"[{name}] FAILED: {self.failed[name]}", file=sys.stderr, flush=True)
                if not self.args.quiet:
                    traceback.print_exc()
        return True

    def member(self, folder: Path, cfg: TrainConfig, data: dict, images, pseudo, record):
        """Train (or, resumed and finished, skip) one member; returns the decoded images for the next one."""
        from zoo.checkpoint import FINGERPRINT_FILE, fingerprint
        from zoo.train import Trainer

        trainer = Trainer(cfg, self.plan.dataset, folder, images=images, accelerator=self.acc, pseudo=pseudo,
                          pseudo_record=record)
        trainer.checkpoint.fingerprint = fingerprint(cfg, data)  # saved with every epoch
        result = trainer.fit(resume=self.args.resume)
        if self.acc.is_main_process and not result.get("skipped"):  # what the finished member was trained from
            write_text(folder / FINGERPRINT_FILE, json.dumps(trainer.checkpoint.fingerprint))
        self.unreadable.update(trainer.unreadable)
        if result.get("skipped"):
            self.say(f"[{folder.name}] already trained, skipped (val AUC {result['val_auc']:.4f})", flush=True)
        else:
            self.say(f"[{folder.name}] val AUC {result['val_auc']:.4f}  kappa {result['val_kappa']:.3f}", flush=True)
        return trainer.images  # decoded once, shared by every member at this size

    def semi_supervised(self, out: Path) -> bool:
        """Round 1 into ``out/round1``, pseudo-labels from its ensemble, round 2 into ``out``; False if interrupted."""
        from zoo.ensemble import Ensemble
        from zoo.members import finished_members
        from zoo.semisupervised import pseudo_labels

        if not self.round(out / "round1", label=", round 1"):
            return False
        cfg, train = self.plan.base, self.plan.dataset.train
        ens = Ensemble.from_paths([str(d) for d in finished_members(out / "round1")], device=cfg.device)
        pseudo, record = pseudo_labels(ens, train[train["label"].isna()], self.args.pseudo_confidence, cfg.cache_dir,
                                       max_gb=cfg.cache_max_gb)
        self.say(f"\nsemi-supervised: {record['pseudo_labelled_studies']} of {record['unlabelled_studies']} "
                 f"unlabelled studies pseudo-labelled by the round-1 ensemble (confidence >= "
                 f"{self.args.pseudo_confidence}); round 2 trains with them (round 1 stays in {out / 'round1'}/)",
                 flush=True)
        return self.round(out, pseudo, record, label=", round 2")


def _train(args: argparse.Namespace, run: RunPlan, acc, say) -> int:
    """Train every member into --out (its lock held), then the leaderboard and the optional push."""
    out, t0 = Path(args.out), time.perf_counter()
    zoo = ZooRun(args, run, acc, say)
    if not (zoo.semi_supervised(out) if args.semi_supervised else zoo.round(out)):
        return 130
    if not acc.is_main_process:
        return 1 if zoo.failed else 0
    return _report(args, run, zoo, time.perf_counter() - t0)


def _report(args: argparse.Namespace, run: RunPlan, zoo: ZooRun, seconds: float) -> int:
    """The leaderboard, the optional push and the failed members; the exit code."""
    out = Path(args.out)
    report_unreadable(zoo.unreadable)
    from zoo.run import write_results
    from zoo.tracking import log_leaderboard

    board = write_results(out)
    log_leaderboard(zoo.acc, out, board)
    print(f"\nLeaderboard ({out}/leaderboard.md, {seconds:.0f}s{', SYNTHETIC data' if run.synthetic else ''}):")
    print(leaderboard.to_markdown(board) if not board.empty else "(no finished members)")
    if args.push_to_hub and not board.empty:
        from zoo.hub import PushError, PushOptions, push_run

        try:
            url = push_run(out, args.push_to_hub, PushOptions(private=not args.public, revision=args.revision,
                           include_study_ids=args.include_study_ids), say=lambda m: print(m, file=sys.stderr))
        except PushError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"pushed {out} to {args.push_to_hub} ({'public' if args.public else 'private'}): {url}")
    if zoo.failed:
        print("\nFailed members:\n" + "\n".join(f"  {k}: {v}" for k, v in zoo.failed.items()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
