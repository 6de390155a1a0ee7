"""Weighted binary cross-entropy on logits, weighted for class imbalance."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def positive_weight(labels: Sequence[float] | np.ndarray) -> float:
    """``n_neg / n_pos`` over the labelled entries (NaN ignored); 1.0 if a class is missing."""
    y = np.asarray(labels, dtype=float)
    y = y[~np.isnan(y)]
    n_pos = float((y == 1).sum())
    n_neg = float((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return 1.0
    return n_neg / n_pos


class WeightedBCE(nn.Module):
    """``BCEWithLogitsLoss(pos_weight=n_neg/n_pos)``; takes logits of shape (B,) or (B, 1) and targets in [0, 1]
    (0/1 labels, soft pseudo-labels or mixed targets). ``smoothing`` e moves targets to ``y(1 - e) + e/2``."""

    def __init__(self, pos_weight: float = 1.0, smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), not {smoothing}")
        self.smoothing = float(smoothing)
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight)))

    @classmethod
    def from_labels(cls, labels: Sequence[float] | np.ndarray, pos_weight: float | None = None) -> WeightedBCE:
        """Weight from the training split's balance unless ``pos_weight`` overrides it."""
        return cls(positive_weight(labels) if pos_weight is None else pos_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.reshape(-1).float()
        target = target.reshape(-1).to(logits.dtype)
        if self.smoothing:
            target = target * (1 - self.smoothing) + self.smoothing / 2
        return nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight)
