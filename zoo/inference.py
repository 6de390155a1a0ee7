"""Batched prediction over decoded images: device, precision, loaders. Imports nothing from training.

``predict.py``, the ensemble and the demo go through :func:`predict_array`; training validation is
:func:`zoo.engine.evaluate` (the same preprocessing, gathered across processes).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from zoo.data import ImageArray
from zoo.data.transforms import to_input
from zoo.runtime import resolve_device, resolve_precision  # noqa: F401 (the one resolver of each, re-exported)


def auto_workers(requested: int, device: torch.device) -> int:
    """DataLoader workers: ``requested`` if >= 0, else up to 8 on CUDA and 0 on CPU (compute needs the cores)."""
    if requested >= 0:
        return requested
    return min(8, max(0, (os.cpu_count() or 1) - 1)) if device.type == "cuda" else 0


class ArrayDataset(torch.utils.data.Dataset):
    """Rows of a decoded :class:`ImageArray` as ``(uint8 (1, S, S) tensor, label, position)``, optionally augmented.

    ``position`` is the item's index in this dataset, so predictions gathered from many processes can be put back in
    order exactly once each.
    """

    def __init__(self, images: ImageArray, rows: np.ndarray, labels: np.ndarray | None = None, augment=None):
        self.images, self.rows, self.augment = images, np.asarray(rows, dtype=np.int64), augment
        self.labels = np.zeros(len(self.rows), np.float32) if labels is None else np.asarray(labels, np.float32)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.images.read(self.rows[i]))[None]
        if self.augment is not None:
            x = self.augment(x)
        return x, self.labels[i], i


def auto_batch_size(requested: int, device: torch.device) -> int:
    """``requested`` if > 0; else 4 on CPU (small batches stay in cache; measured fastest in bench/speed.py), 32
    elsewhere."""
    return requested if requested > 0 else (4 if device.type == "cpu" else 32)


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Autocast for a resolved precision (fp32: none)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Eval mode on ``device`` in channels_last memory format (oneDNN and cuDNN convolutions are faster in it)."""
    return model.to(device, memory_format=torch.channels_last).eval()


@torch.inference_mode()
def predict_array(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, precision: str = "auto", tta: bool = False,
    quiet: bool = True, desc: str = "predict",
) -> np.ndarray:
    """Probabilities for every item of ``loader`` (uint8 batches), in order; ``tta`` averages with the h-flip.

    ``precision``: fp32, bf16, fp16 or auto (:func:`resolve_precision`).
    """
    model.eval()
    precision = resolve_precision(precision, device)
    out = []
    for x, *_ in tqdm(loader, desc=desc, leave=False, disable=True if quiet else None, unit="batch"):
        x = to_input(x.to(device, non_blocking=True), model.mean, model.std)
        with autocast(device, precision):
            p = torch.sigmoid(model(x).float())
            if tta:
                p = (p + torch.sigmoid(model(torch.flip(x, dims=[-1])).float())) / 2
        out.append(p.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)
