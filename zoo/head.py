"""The classifier head every zoo member shares."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class MLPHead(nn.Sequential):
    """``[Linear -> BatchNorm -> Dropout -> ReLU] x len(hidden)`` then ``Linear(hidden[-1], 1)``: one logit.

    The default ``hidden=(1024, 512)``, ``dropout=0.3`` is the seed project's 3-layer head.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (1024, 512), dropout: float = 0.3):
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.Dropout(dropout), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, 1))
        super().__init__(*layers)
