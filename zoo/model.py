"""BoneClassifier: a registered backbone + the shared head; its config.json rebuilds it exactly."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from safetensors.torch import load_model
from torch import nn

from zoo.head import MLPHead
from zoo.members import MEMBER_FILES
from zoo.registry import create_backbone, get_backbone


class BoneClassifier(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="bone-zoo",
    repo_url="https://github.com/bone-zoo/bone-zoo",
    pipeline_tag="image-classification",
    license="apache-2.0",
    tags=["bone-zoo", "radiology", "x-ray", "musculoskeletal", "image-classification"],
):
    """Backbone (1-channel, pooled features) -> MLP head -> one abnormality logit.

    Every constructor argument is JSON-safe and is what config.json holds, so ``from_pretrained`` rebuilds the model
    exactly. ``threshold``, ``training`` and ``metrics`` are metadata that travel with the weights.
    """

    def __init__(
        self,
        backbone: str,
        img_size: int = 512,
        head_hidden: Sequence[int] = (1024, 512),
        dropout: float = 0.3,
        mean: float = 0.449,
        std: float = 0.226,
        labels: Sequence[str] = ("normal", "abnormal"),
        threshold: float = 0.5,
        training: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        calibration: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.spec = get_backbone(backbone)
        self.backbone_name = backbone
        self.img_size = int(img_size)
        self.head_hidden = [int(h) for h in head_hidden]
        self.dropout = float(dropout)
        self.mean = float(mean)
        self.std = float(std)
        self.labels = list(labels)
        self.threshold = float(threshold)
        self.training_config = dict(training or {})
        self.metrics = dict(metrics or {})
        self.calibration = dict(calibration or {})  # zoo.calibration.Calibrator fitted on validation studies
        self.backbone = create_backbone(backbone, pretrained=False, img_size=self.img_size)
        self.head = MLPHead(self.backbone.num_features, self.head_hidden, self.dropout)

    @classmethod
    def new(cls, backbone: str, *, pretrained: bool = False, weights: str | None = None, **kwargs) -> BoneClassifier:
        """A fresh model for training; ``pretrained``/``weights`` load ImageNet weights into the backbone."""
        model = cls(backbone, **kwargs)
        if pretrained or weights:
            model.backbone = create_backbone(backbone, pretrained=pretrained, weights=weights, img_size=model.img_size)
        return model

    def get_config(self) -> dict[str, Any]:
        """Exactly the constructor's arguments, from the current state (so metrics set after training are kept)."""
        return {
            "backbone": self.backbone_name,
            "img_size": self.img_size,
            "head_hidden": self.head_hidden,
            "dropout": self.dropout,
            "mean": self.mean,
            "std": self.std,
            "labels": self.labels,
            "threshold": self.threshold,
            "training": self.training_config,
            "metrics": self.metrics,
            "calibration": self.calibration,
        }

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, 1, H, W) normalised images -> (B,) logits."""
        return self.head(self.backbone(x)).squeeze(-1)

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        from zoo.card import member_card

        return member_card(self.get_config())

    def save_member(self, folder: str | Path) -> Path:
        """Write model.safetensors, config.json and README.md into ``folder``, each file replaced atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".saving-", dir=folder))
        try:
            self.save_pretrained(tmp, config=self.get_config())
            cfg = json.loads((tmp / "config.json").read_text())
            cfg[WEIGHTS_HASH] = file_sha256(tmp / "model.safetensors")
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
            for name in MEMBER_FILES:  # each rename is atomic; the hash ties the config to its weights between them
                os.replace(tmp / name, folder / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | Path | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         map_location: str = "cpu", strict: bool = True, **model_kwargs) -> BoneClassifier:
        """Safetensors only (never a pickle), strict by default, no chatter."""
        if os.path.isdir(model_id):
            file = os.path.join(model_id, "model.safetensors")
        else:
            from huggingface_hub import hf_hub_download

            file = hf_hub_download(model_id, "model.safetensors", revision=revision, cache_dir=cache_dir,
                                   force_download=force_download, local_files_only=local_files_only, token=token)
        model = cls(**model_kwargs)
        load_model(model, file, strict=strict, device=str(map_location))
        return model.eval()

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", **hub_kwargs) -> BoneClassifier:
        """Load a member from a folder (or a Hub id) in eval mode; weights must match the config exactly.

        A folder's config.json names the SHA-256 of its model.safetensors (``weights_sha256``, written by
        :meth:`save_member`): weights that are not the config's (a member being rewritten at this moment, or one file
        replaced by hand) are never used together; the load is retried while a writer finishes, then refused.
        """
        if not Path(path).is_dir():
            return cls.from_pretrained(str(path), map_location=str(device), strict=True, **hub_kwargs).eval()
        from safetensors.torch import load as load_safetensors

        folder = Path(path)
        for attempt in range(RETRIES):  # config and weights are each read once, as bytes, and checked together
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            data = (folder / "model.safetensors").read_bytes()
            expected = config.get(WEIGHTS_HASH)
            if expected is None or hashlib.sha256(data).hexdigest() == expected:
                params = inspect.signature(cls.__init__).parameters
                model = cls(**{k: v for k, v in config.items() if k in params and k != "self"})
                model.load_state_dict(load_safetensors(data), strict=True)
                return model.to(device).eval()
            time.sleep(0.02 * (attempt + 1))  # a writer between its renames is done within milliseconds
        raise WeightsMismatch(f"{folder}: model.safetensors is not the one its config.json names ({WEIGHTS_HASH}): "
                              "damaged or truncated, replaced by hand, or being rewritten. Copy or download the whole "
                              "member folder again")


WEIGHTS_HASH = "weights_sha256"
RETRIES = 8


class WeightsMismatch(ValueError):
    """A member folder whose weights are not the ones its config.json names."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
