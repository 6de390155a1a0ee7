"""Train a zoo of backbones with one head, one loss and one trainer; write member folders and a leaderboard.

  python train_all.py                                  # synthetic radiographs (generated once), a small zoo
  python train_all.py --data DIR --models 'regnet*'    # competition layout or MURA-v1.1, every RegNet
  accelerate launch --multi_gpu --num_processes 4 train_all.py --data DIR     # DDP on 4 GPUs
  torchrun --nproc_per_node 2 train_all.py --data DIR --device cpu             # DDP on CPU (gloo)
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from dataclasses import fields
from pathlib import Path

from zoo import leaderboard
from zoo.config import PRECISIONS, TrainConfig
from zoo.data import SyntheticSpec, ensure_synthetic, load_dataset, report_unreadable

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
    a("--epochs", type=int, default=None, help=f"epochs per member (default {d.epochs}; 3 on synthetic data)")
    a("--img-size", type=int, default=None, help=f"square input size in px (default {d.img_size}; 96 on synthetic)")
    a("--batch-size", type=int, default=d.batch_size, help="batch size (default %(default)s)")
    a("--lr", type=float, default=None, help=f"Adam learning rate (default {d.lr}; 1e-3 on synthetic data)")
    a("--weight-decay", type=float, default=d.weight_decay, help="Adam weight decay (default %(default)s)")
    a("--step-size", type=int, default=d.step_size, help="StepLR step in epochs (default %(default)s)")
    a("--gamma", type=float, default=d.gamma, help="StepLR factor (default %(default)s)")
    a("--patience", type=int, default=d.patience, help="early stop after N epochs without a better val AUC; 0 = off "
      "(default %(default)s)")
    a("--val-fraction", type=float, default=d.val_fraction, help="share of labelled studies held out for "
      "validation, split by study (default %(default)s)")
    a("--pretrained", action=argparse.BooleanOptionalAction, default=d.pretrained,
      help="start from ImageNet weights (timm/torchvision download; needs internet unless --pretrained-weights) "
      "(default: %(default)s)")
    a("--pretrained-weights", default=None, metavar="PATH",
      help="offline ImageNet weights: a .safetensors file, or a folder of <backbone>.safetensors files")
    a("--rotation", type=float, default=d.rotation, help="augmentation: max rotation in degrees (default %(default)s)")
    a("--hflip", action=argparse.BooleanOptionalAction, default=d.hflip, help="augmentation: horizontal flip "
      "(default: %(default)s)")
    a("--translate", type=float, default=d.translate, help="augmentation: max translation, fraction of the size "
      "(default %(default)s)")
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
    a("--out", default="weights", help="run folder: one sub-folder per member + leaderboard (default %(default)s)")
    a("--device", default=d.device, help="cuda, cuda:1, cpu, mps or auto (default %(default)s)")
    a("--workers", type=int, default=d.workers, help="DataLoader workers, -1 = auto (default %(default)s)")
    a("--cache-dir", default=None, help="decoded-image cache (default ~/.cache/bone-zoo/images; '' = in memory)")
    a("--seed", type=int, default=d.seed, help="seed for the split, init, shuffling and augmentation "
      "(default %(default)s)")
    a("--resume", action="store_true", help="continue interrupted members from their checkpoint; skip finished ones")
    a("--semi-supervised", action="store_true", help="use the unlabelled training studies: train, pseudo-label "
      "the ones the calibrated ensemble is confident about (soft targets), train again with them; round 1 is kept "
      "in OUT/round1/")
    a("--pseudo-confidence", type=float, default=0.9, help="with --semi-supervised: minimum max(p, 1-p) of the "
      "ensemble for a pseudo-label (default %(default)s)")
    a("--synthetic-studies", type=int, default=SyntheticSpec.n_train, help="training studies in the synthetic set "
      "(default %(default)s)")
    a("--push-to-hub", default=None, metavar="ORG/NAME", help="upload the run when it finishes: one model repo, "
      "a sub-folder per member, one commit (token from HF_TOKEN or `hf auth login`)")
    a("--private", action="store_true", help="with --push-to-hub: create the repo private")
    a("--revision", default=None, help="with --push-to-hub: branch to push to (created if missing)")
    a("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    return p


def config_for(args: argparse.Namespace, backbone: str) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return TrainConfig(**{**values, "backbone": backbone})


def main(args: argparse.Namespace) -> int:
    from zoo.registry import describe_backbones, resolve_backbones  # the registry imports PyTorch: not for --help

    if args.list_models:
        print(describe_backbones())
        return 0
    synthetic = args.data is None
    if synthetic:
        for k, v in {"epochs": 3, "img_size": 96, "lr": 1e-3}.items():
            if getattr(args, k) is None:
                setattr(args, k, v)
    from zoo.train import Trainer, make_accelerator  # PyTorch and Accelerate: only when training

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
    if dataset.train["label"].notna().sum() == 0:
        print(f"error: {root}: no labelled training images (train.csv labels 0/1)", file=sys.stderr)
        return 2
    if acc.num_processes > 1:
        say(f"distributed: {acc.num_processes} processes ({acc.distributed_type}), mixed precision "
            f"{acc.mixed_precision}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    t0 = time.perf_counter()

    def train_round(run_dir: Path, pseudo=None, record=None, label: str = "") -> bool:
        """Every member into ``run_dir``; False when interrupted (Ctrl-C)."""
        images = None
        for i, name in enumerate(models, 1):
            cfg = config_for(args, name)
            say(f"\n[{i}/{len(models)}{label}] {name}: {cfg.epochs} epochs at {cfg.img_size}px on {acc.device}",
                flush=True)
            try:
                trainer = Trainer(cfg, dataset, run_dir / name, images=images, accelerator=acc, pseudo=pseudo,
                                  pseudo_record=record)
                result = trainer.fit(resume=args.resume)
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
        from zoo.hub import push_run

        url = push_run(out, args.push_to_hub, private=args.private or None, revision=args.revision)
        print(f"pushed {out} to {args.push_to_hub}: {url}")
    if failed:
        print("\nFailed members:\n" + "\n".join(f"  {k}: {v}" for k, v in failed.items()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
