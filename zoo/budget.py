"""``train_all.py --budget-minutes M``: fit the zoo to a wall-clock budget on the machine it runs on.

It measures, here and now, how long each candidate backbone takes per training and per validation image (a few
real optimizer steps at the recipe's precision), then picks the plan the recipe prefers that fits: its backbones in
order of preference, its number of folds, the largest of its image sizes, and as many epochs as the budget allows
between the recipe's minimum and maximum. Flags the user gave (``--models``, ``--img-size``, ``--folds``,
``--epochs``: :class:`Fixed`) are kept as they are. Only the images that train or validate count: the calibration
split is held out of both (it is predicted once per member, within ``MEMBER_OVERHEAD_S``).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field

import pandas as pd
import torch

from zoo.calibration import auto_calibration_fraction, calibration_split
from zoo.config import TrainConfig
from zoo.recipes import Recipe

SAFETY = 0.85  # share of the budget planned for training; the rest covers loading, decoding and jitter
MEMBER_OVERHEAD_S = 5.0  # per member: building, the best-weights reload, final validation, calibration, files
EPOCH_OVERHEAD_S = 1.0  # per epoch: the checkpoint and the log


@dataclass
class Plan:
    models: list[str]
    img_size: int
    folds: int
    epochs: int
    budget_s: float
    estimate_s: float
    speed: dict[str, tuple[float, float]] = field(default_factory=dict)  # backbone -> (s/train image, s/val image)

    def describe(self) -> str:
        per = ", ".join(f"{b} {1 / t:.0f} img/s" for b, (t, _) in self.speed.items() if b in self.models)
        return (f"budget {self.budget_s / 60:g} min -> {len(self.models)} backbone(s) ({', '.join(self.models)}) x "
                f"{self.folds} fold(s) x {self.epochs} epochs at {self.img_size} px, estimated "
                f"{self.estimate_s / 60:.1f} min of training (measured here: {per})")


@dataclass(frozen=True)
class Fixed:
    """What the user gave and the planner keeps (None: the planner chooses)."""

    models: list[str] | None = None
    img_size: int | None = None
    folds: int | None = None
    epochs: int | None = None


def trainable_images(images: pd.DataFrame, cfg: TrainConfig) -> int:
    """Labelled images of ``images`` (a training table) that ``cfg``'s members train or validate on: the labelled
    ones outside the calibration split."""
    pool, _ = calibration_split(images, auto_calibration_fraction(images, cfg.calibration_fraction), cfg.seed)
    return int(pool["label"].notna().sum())


def measure(cfg: TrainConfig, steps: int = 4) -> tuple[float, float]:
    """Seconds per image of one training step (augmentation, forward, backward, optimizer) and of validation for
    ``cfg``'s backbone, image size, micro-batch, augmentation and precision, on CPU or the default GPU; the first
    steps (warm-up) are not counted; the median of ``steps`` timed steps is."""
    from zoo.model import BoneClassifier
    from zoo.train import augmentation, make_accelerator, micro_batch

    acc = make_accelerator(cfg)
    mb = micro_batch(cfg, acc.device.type)
    torch.manual_seed(0)
    model = BoneClassifier(cfg.backbone, img_size=cfg.img_size, head_hidden=cfg.head_hidden).to(
        acc.device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(mb, 1, cfg.img_size, cfg.img_size, device=acc.device).contiguous(memory_format=torch.channels_last)
    y = (torch.arange(mb, device=acc.device) % 2).float()
    aug = augmentation(cfg)
    img = torch.randint(0, 255, (1, cfg.img_size, cfg.img_size), dtype=torch.uint8)

    def step() -> None:
        for _ in range(mb):
            aug(img)
        with acc.autocast():
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    for _ in range(2):  # warm-up: oneDNN/cuDNN pick their kernels on the first steps
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(acc.device)
        times.append(time.perf_counter() - t0)
    train = statistics.median(times) / mb  # the median step: a busy moment of the machine does not decide
    if cfg.boxes:  # the CAM loss's second-order backward (zoo.boxes.BOX_COST, measured)
        from zoo.boxes import BOX_COST

        train *= BOX_COST
    model.eval()
    with torch.inference_mode(), acc.autocast():
        model(x)
        t0 = time.perf_counter()
        model(x)
        _sync(acc.device)
    return train, (time.perf_counter() - t0) / mb


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plan(budget_minutes: float, recipe: Recipe, base: TrainConfig, n_labelled: int, *, fixed: Fixed = Fixed(),
         say=print) -> Plan:
    """The plan for ``budget_minutes`` of training on ``n_labelled`` labelled images (:func:`trainable_images`).
    What ``fixed`` gives is kept; the rest comes from ``recipe.budget``: the first (image size, folds) in the recipe's
    order of preference where its first ``min_models`` backbones (a prefix of its candidates, at most
    ``max_models``) train for ``min_epochs``, with as many of them and as many epochs (up to ``max_epochs``) as fit;
    failing that, one backbone; failing that, the smallest option with fewer epochs."""
    if budget_minutes <= 0:
        raise ValueError(f"--budget-minutes must be positive, not {budget_minutes}")
    prefs = recipe.budget
    budget = budget_minutes * 60.0
    models = fixed.models
    candidates = list(models or prefs["models"])
    sizes = [fixed.img_size] if fixed.img_size else list(prefs["sizes"])
    fold_options = [fixed.folds] if fixed.folds else list(prefs["folds"])
    min_epochs = fixed.epochs or prefs["min_epochs"]
    max_epochs = fixed.epochs or prefs["max_epochs"]
    speed: dict[tuple[str, int], tuple[float, float]] = {}

    def cost(name: str, size: int, k: int) -> float:  # seconds per epoch of one member
        if (name, size) not in speed:
            speed[name, size] = measure(dataclasses.replace(base, backbone=name, img_size=size))
        t_train, t_val = speed[name, size]
        n_val = n_labelled / k if k > 1 else n_labelled * base.val_fraction
        return (n_labelled - n_val) * t_train + n_val * t_val + EPOCH_OVERHEAD_S

    need = min(len(candidates), prefs.get("min_models", 1)) if models is None else len(candidates)
    for least in sorted({need, 1}, reverse=True):  # first with the recipe's minimum of backbones, then with one
        for size in sizes:
            for k in fold_options:
                chosen: list[str] = []
                for name in candidates[: prefs["max_models"] if models is None else None]:  # a prefix, in order
                    per_epoch = sum(cost(b, size, k) for b in chosen + [name]) * k
                    if per_epoch * min_epochs + MEMBER_OVERHEAD_S * k * (len(chosen) + 1) > budget * SAFETY:
                        break
                    chosen.append(name)
                if len(chosen) >= least:
                    per_epoch = sum(cost(b, size, k) for b in chosen) * k
                    fixed = MEMBER_OVERHEAD_S * k * len(chosen)
                    n_epochs = max(min_epochs, min(max_epochs, math.floor((budget * SAFETY - fixed) / per_epoch)))
                    out = Plan(chosen, size, k, n_epochs, budget, per_epoch * n_epochs + fixed,
                               {b: speed[b, size] for b in chosen})
                    say(f"budget: {out.describe()}")
                    return out
    # nothing fits at the minimum: the smallest option, fewest epochs that still train
    name, size, k = candidates[0], sizes[-1], fold_options[-1]
    per_epoch, fixed = cost(name, size, k) * k, MEMBER_OVERHEAD_S * k
    n_epochs = max(1, math.floor((budget * SAFETY - fixed) / per_epoch))
    out = Plan([name], size, k, n_epochs, budget, per_epoch * n_epochs + fixed, {name: speed[name, size]})
    say(f"budget: too small for the recipe's minimum of {min_epochs} epochs; {out.describe()}")
    return out
