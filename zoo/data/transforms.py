"""Tensor transforms: the seed's augmentation (rotation, flip, translation) and normalisation."""

from __future__ import annotations

import torch
from torchvision.transforms import v2


def train_augment(rotation: float = 30.0, hflip: bool = True, translate: float = 0.1) -> v2.Compose:
    """Random rotation ±``rotation``°, horizontal flip, translation ``translate`` (fraction); 0/False disables."""
    ops: list = []
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    if rotation or translate:
        ops.append(v2.RandomAffine(degrees=rotation, translate=(translate, translate) if translate else None))
    return v2.Compose(ops)


def to_input(batch_u8: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (B, 1, H, W) -> normalised float in channels_last (on whatever device the batch is on).

    Models run in channels_last (oneDNN and cuDNN convolutions are faster in it), so every input is laid out so too.
    """
    return ((batch_u8.float() / 255.0 - mean) / std).contiguous(memory_format=torch.channels_last)
