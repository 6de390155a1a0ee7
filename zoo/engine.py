"""The training step and the evaluation, on Accelerate: devices, mixed precision, DDP and gradient accumulation.

Both take objects already passed through ``accelerator.prepare``. Under DDP each process trains on its shard of the
epoch; :func:`evaluate` gathers the predictions of every process and returns exactly one per validation item, in
dataset order (padded duplicates that make batches even are dropped).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from zoo.data.transforms import to_input


@dataclass
class TrainStep:
    """What one optimizer step is made of (objects already passed through ``accelerator.prepare``).

    ``on_step`` is called after each optimizer step, never inside an accumulation window (per-step learning-rate
    schedules such as warm-up + cosine, the weight EMA).
    ``mixup`` > 0 blends each batch with a shuffled copy of itself, images and targets alike, by a factor drawn from
    Beta(mixup, mixup) (Zhang et al. 2018).
    """

    model: torch.nn.Module
    loss_fn: Callable
    optimizer: torch.optim.Optimizer
    accelerator: object
    mean: float
    std: float
    mixup: float = 0.0
    on_step: Callable[[], None] | None = None


def train_one_epoch(train_step: TrainStep, loader, *, desc: str = "train", quiet: bool = False) -> float:
    """One pass over ``loader``; returns the mean training loss over every process's samples."""
    model, loss_fn, optimizer, accelerator = (train_step.model, train_step.loss_fn, train_step.optimizer,
                                             train_step.accelerator)
    mean, std, mixup, on_step = train_step.mean, train_step.std, train_step.mixup, train_step.on_step
    model.train()
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # (sum of losses, samples)
    show = not quiet and accelerator.is_local_main_process
    bar = tqdm(loader, desc=desc, leave=False, disable=None if show else True, unit="batch")
    for step, (x, y, _, *mask) in enumerate(bar):  # a mask only with --boxes (zoo.boxes)
        with accelerator.accumulate(model):
            x = to_input(x, mean, std)
            if mixup > 0 and len(y) > 1:
                lam = float(np.random.default_rng(torch.randint(2**31, ()).item()).beta(mixup, mixup))
                perm = torch.randperm(len(y), device=x.device)
                x, y = lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]
                mask = [lam * m.float() + (1 - lam) * m.float()[perm] for m in mask]
            loss = loss_fn(model(x), y, *mask)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients and on_step is not None:
            on_step()
        total[0] += loss.detach().double() * len(y)
        total[1] += len(y)
        if show and step % 10 == 0:
            bar.set_postfix(loss=f"{(total[0] / total[1]).item():.4f}")
    total = accelerator.reduce(total, reduction="sum")
    loss = (total[0] / total[1]).item() if total[1] > 0 else math.nan
    if not math.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss}")
    return loss


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader, accelerator, n_items: int, *, mean: float, std: float) -> np.ndarray:
    """Probability for each of the ``n_items`` items of the (prepared) loader's dataset, in dataset order.

    Every process predicts its shard; predictions are gathered with their item positions, so each item is counted
    exactly once whatever the number of processes (a missing or repeated item is an error, not a silent AUC shift).
    """
    model.eval()
    positions, probs = [], []
    for x, _, pos in loader:
        with accelerator.autocast():  # also for a model that was not prepared (the weight EMA)
            p = torch.sigmoid(model(to_input(x, mean, std)).float().reshape(-1))
        pos, p = accelerator.gather_for_metrics((pos, p))
        positions.append(pos.cpu())
        probs.append(p.float().cpu())
    out = np.full(n_items, np.nan, dtype=np.float32)
    if not positions:
        return out
    pos = torch.cat(positions).numpy()
    counts = np.bincount(pos, minlength=n_items)
    if len(counts) != n_items or (counts != 1).any():
        raise RuntimeError(f"evaluation gathered {len(pos)} predictions for {n_items} items "
                           f"({int((counts == 0).sum())} missing, {int((counts > 1).sum())} repeated)")
    out[pos] = torch.cat(probs).numpy()
    return out
