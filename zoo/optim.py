"""Optimizer and learning-rate schedule of a :class:`zoo.config.TrainConfig`, from timm's factories.

- optimizer: ``timm.optim.create_optimizer_v2`` (``adam`` is ``torch.optim.Adam`` with the decay on every parameter,
  as the seed project; ``adamw`` is ``torch.optim.AdamW`` without decay on norms and biases).
- ``step``: ``timm.scheduler.create_scheduler_v2("step")``, stepped after each epoch: exactly torch's StepLR.
- ``cosine``: linear warm-up over ``warmup_epochs`` (step s at (s + 1) / W of the rate), then cosine decay to 1% of
  it, per optimizer step, on ``torch.optim.lr_scheduler.LambdaLR``. timm's CosineLRScheduler gives the same cosine
  but not this warm-up: its ramp starts at ``warmup_lr`` with slope (lr - warmup_lr) / W and reaches the rate one step
  later, so every warm-up step of the schedule members were trained with would move.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from zoo.config import TrainConfig


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    if cfg.optimizer not in ("adam", "adamw"):
        raise ValueError(f"--optimizer must be adam or adamw, not {cfg.optimizer!r}")
    return create_optimizer_v2(model, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               filter_bias_and_bn=cfg.optimizer == "adamw")


class LrSchedule:
    """The schedule of ``cfg`` on ``optimizer``; the trainer calls :meth:`after_update` after each optimizer step
    and :meth:`after_epoch` after each epoch, and the one that applies steps it. ``state_dict``/``load_state_dict``
    for the checkpoint."""

    def __init__(self, cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
        self.per_step = cfg.scheduler == "cosine"
        if cfg.scheduler == "step":
            from timm.scheduler import create_scheduler_v2

            self.scheduler, _ = create_scheduler_v2(optimizer, "step", num_epochs=cfg.epochs,
                                                    decay_epochs=cfg.step_size, decay_rate=cfg.gamma)
        elif cfg.scheduler == "cosine":
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
                round(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch))
        else:
            raise ValueError(f"--scheduler must be step or cosine, not {cfg.scheduler!r}")

    def after_update(self) -> None:
        if self.per_step:
            self.scheduler.step()

    def after_epoch(self, epoch: int) -> None:
        """``epoch`` (from 1) is done: a per-epoch schedule sets the rate of the next one."""
        if not self.per_step:
            self.scheduler.step(epoch)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def warmup_cosine(warmup_steps: int, total_steps: int, floor: float = 0.01) -> Callable[[int], float]:
    """Learning-rate factor per optimizer step: linear warm-up to 1 over ``warmup_steps``, then cosine decay to
    ``floor`` at ``total_steps`` (for ``torch.optim.lr_scheduler.LambdaLR``)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return factor
