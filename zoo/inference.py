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


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


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
        x = torch.from_numpy(np.array(self.images.array[self.rows[i]]))[None]
        if self.augment is not None:
            x = self.augment(x)
        return x, self.labels[i], i


def autocast(device: torch.device, amp: bool) -> AbstractContextManager:
    """Mixed precision for inference: bf16 (fp16 where bf16 is missing) on CUDA; nothing elsewhere."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return nullcontext()


@torch.inference_mode()
def predict_array(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: bool = True, tta: bool = False,
    quiet: bool = True, desc: str = "predict",
) -> np.ndarray:
    """Probabilities for every item of ``loader`` (uint8 batches), in order; ``tta`` averages with the h-flip."""
    model.eval()
    out = []
    for x, *_ in tqdm(loader, desc=desc, leave=False, disable=True if quiet else None, unit="batch"):
        x = to_input(x.to(device, non_blocking=True), model.mean, model.std)
        with autocast(device, amp):
            p = torch.sigmoid(model(x).float())
            if tta:
                p = (p + torch.sigmoid(model(torch.flip(x, dims=[-1])).float())) / 2
        out.append(p.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)
