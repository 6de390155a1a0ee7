"""Tensor transforms: training augmentation (the seed's rotation, flip, translation; the modern recipe's crop and
intensity jitter) and normalisation."""

from __future__ import annotations

import torch
from torchvision.transforms import v2


class RandomGamma(v2.Transform):
    """Gamma correction with gamma drawn from [1 - g, 1 + g] (X-ray exposure and post-processing curves vary).
    A v2 transform, so a ``tv_tensors.Mask`` augmented with the image (:mod:`zoo.boxes`) passes through unchanged."""

    def __init__(self, g: float):
        super().__init__()
        self.g = float(g)

    def make_params(self, flat_inputs: list) -> dict:
        return {"gamma": 1.0 + (torch.rand(()).item() * 2 - 1) * self.g}

    def transform(self, inpt, params: dict):
        return self._call_kernel(v2.functional.adjust_gamma, inpt, gamma=params["gamma"])


def train_augment(rotation: float = 30.0, hflip: bool = True, translate: float = 0.1, *, size: int | None = None,
                  crop_scale: float = 1.0, brightness: float = 0.0, contrast: float = 0.0,
                  gamma: float = 0.0) -> v2.Compose:
    """Augmentation of uint8 (1, S, S) images; a 0/False/1.0 argument disables its step.

    Random resized crop back to ``size`` keeping at least ``crop_scale`` of the area (aspect 3:4..4:3), horizontal flip,
    rotation ±``rotation``° with translation ``translate`` (fraction of the size), then brightness, contrast and gamma
    jitter (each a factor drawn from [1 - v, 1 + v]).
    """
    ops: list = []
    if crop_scale < 1.0:
        if not size:
            raise ValueError("a random resized crop needs the output size")
        ops.append(v2.RandomResizedCrop(size, scale=(crop_scale, 1.0), ratio=(3 / 4, 4 / 3), antialias=True))
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    if rotation or translate:
        ops.append(v2.RandomAffine(degrees=rotation, translate=(translate, translate) if translate else None))
    if brightness or contrast:
        ops.append(v2.ColorJitter(brightness=brightness or None, contrast=contrast or None))
    if gamma:
        ops.append(RandomGamma(gamma))
    return v2.Compose(ops)


def to_input(batch_u8: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (B, 1, H, W) -> normalised float in channels_last (on whatever device the batch is on).

    Models run in channels_last (oneDNN and cuDNN convolutions are faster in it), so every input is laid out so too.
    """
    return ((batch_u8.float() / 255.0 - mean) / std).contiguous(memory_format=torch.channels_last)
