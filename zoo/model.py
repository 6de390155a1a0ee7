"""BoneClassifier: a registered backbone + the shared head; its config.json rebuilds it exactly.

The member's files (which ones, their atomic write, the verified read, the Hub download) are ``zoo.members``'; this
module builds the network from what it read and imports nothing that imports it back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import nn

from zoo.card import CARD_METADATA, MEMBER_TAGS, REPO_URL, member_card
from zoo.head import MLPHead
from zoo.members import (  # WeightsMismatch is re-exported: zoo.model.WeightsMismatch as before
    ShapeMismatch,
    WeightsMismatch,  # noqa: F401
    download_member,
    read_verified,
    save_files,
)
from zoo.registry import create_backbone, get_backbone


@dataclass
class ClassifierConfig:
    """What config.json holds besides the weights' hash: exactly :class:`BoneClassifier`'s constructor, JSON-safe.
    ``threshold``, ``training``, ``metrics`` and ``calibration`` are metadata that travel with the weights."""

    backbone: str
    img_size: int = 512
    head_hidden: Sequence[int] = (1024, 512)
    dropout: float = 0.3
    mean: float = 0.449
    std: float = 0.226
    labels: Sequence[str] = ("normal", "abnormal")
    threshold: float = 0.5
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)  # zoo.calibration.Calibrator fitted on validation

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> ClassifierConfig:
        """The constructor's part of a config.json (``weights_sha256`` and unknown keys are not arguments)."""
        return cls(**{f.name: cfg[f.name] for f in fields(cls) if f.name in cfg})


class BoneClassifier(nn.Module, PyTorchModelHubMixin, repo_url=REPO_URL, tags=list(MEMBER_TAGS), **CARD_METADATA):
    """Backbone (1-channel, pooled features) -> MLP head -> one abnormality logit.

    ``BoneClassifier("resnet10t", img_size=64)``: the backbone name, then any of :class:`ClassifierConfig`'s fields
    (an unknown one is a TypeError). Every argument is JSON-safe and is what config.json holds, so
    ``from_pretrained`` rebuilds the model exactly.
    """

    def __init__(self, backbone: str, **options: Any):
        super().__init__()
        c = ClassifierConfig(backbone, **options)
        self.spec = get_backbone(c.backbone)
        self.backbone_name = c.backbone
        self.img_size = int(c.img_size)
        self.head_hidden = [int(h) for h in c.head_hidden]
        self.dropout = float(c.dropout)
        self.mean = float(c.mean)
        self.std = float(c.std)
        self.labels = list(c.labels)
        self.threshold = float(c.threshold)
        self.training_config = dict(c.training or {})
        self.metrics = dict(c.metrics or {})
        self.calibration = dict(c.calibration or {})
        self.weights_sha256: str | None = None  # of the model.safetensors this model was loaded from or saved to
        self.backbone = create_backbone(c.backbone, pretrained=False, img_size=self.img_size)
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
        return asdict(ClassifierConfig(
            self.backbone_name, img_size=self.img_size, head_hidden=self.head_hidden, dropout=self.dropout,
            mean=self.mean, std=self.std, labels=self.labels, threshold=self.threshold,
            training=self.training_config, metrics=self.metrics, calibration=self.calibration))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, 1, H, W) normalised images -> (B,) logits."""
        return self.head(self.backbone(x)).squeeze(-1)

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        return member_card(self.get_config())

    def save_pretrained(self, save_directory: str | Path, *, config: dict | None = None, **kwargs):
        """huggingface_hub's save, with config.json from the current state (:meth:`get_config`) unless given."""
        return super().save_pretrained(save_directory, config=config or self.get_config(), **kwargs)

    def save_member(self, folder: str | Path) -> Path:
        """Write model.safetensors, config.json (with the weights' hash) and README.md into ``folder``, each file
        replaced atomically and durably (:func:`zoo.members.save_files`)."""
        self.weights_sha256 = save_files(folder, self.save_pretrained)
        return Path(folder)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | Path | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         map_location: str = "cpu", strict: bool = True, **model_kwargs) -> BoneClassifier:
        """A folder, the Hub cache (``HF_HUB_OFFLINE=1``) or a Hub id: the member's files of one commit, then the one
        verified load (:meth:`load_verified`). The constructor is the config.json read together with the weights;
        ``model_kwargs`` (the mixin's earlier read of the same config.json) are not used. Safetensors only."""
        if not strict:
            raise ValueError("bone-zoo members load strictly: config.json is the constructor of its weights")
        folder = Path(model_id) if Path(model_id).is_dir() else download_member(
            model_id, revision=revision, cache_dir=cache_dir, token=token, force_download=force_download,
            local_files_only=local_files_only)
        return cls.load_verified(folder, map_location)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", **hub_kwargs) -> BoneClassifier:
        """Load a member from a folder (or a Hub id) in eval mode; weights must match the config exactly.

        A folder's config.json names the SHA-256 of its model.safetensors (``weights_sha256``, written by
        :meth:`save_member`): weights that are not the config's (a member being rewritten at this moment, or one file
        replaced by hand) are never used together; the load is retried while a writer finishes, then refused.
        """
        if not Path(path).is_dir():
            return cls.from_pretrained(str(path), map_location=str(device), **hub_kwargs)
        return cls.load_verified(path, device)

    @classmethod
    def load_verified(cls, folder: str | Path, device: str | torch.device = "cpu") -> BoneClassifier:
        """The one load every path ends in (:meth:`load`, :meth:`from_pretrained`, ``zoo.loader.load_model``, the
        demo, export): :func:`zoo.members.read_verified` checks the weights against config.json's hash and the
        config's head and image sizes against the safetensors header; the network is then compared with the weights
        on the meta device (no memory), and only then allocated and loaded, strictly."""
        from safetensors.torch import load as load_safetensors

        member = read_verified(folder)
        kwargs = asdict(ClassifierConfig.from_dict(member.config))
        try:
            with torch.device("meta"):
                skeleton, model = cls(**kwargs), None
        except (RuntimeError, NotImplementedError):  # a builder that cannot run on meta (torchvision's stem copy):
            # built for real, compared all the same: its sizes are bounded and its head is the header's, which
            # zoo.members.safetensors_shapes checked against the bytes the file holds
            skeleton = model = cls(**kwargs)
        cls._check_skeleton(skeleton, kwargs, member.shapes, Path(folder))
        model = model if model is not None else cls(**kwargs)
        model.load_state_dict(load_safetensors(member.data), strict=True)
        model.weights_sha256 = member.sha256
        return model.to(device).eval()

    @staticmethod
    def _check_skeleton(skeleton: nn.Module, kwargs: dict[str, Any], shapes: dict[str, tuple[int, ...]],
                        folder: Path) -> None:
        """The network ``kwargs`` build (on the meta device where it can) against the weights' shapes: anything the
        config sets that the weights record (a ViT's image size in its position embeddings) is refused before the
        weights are loaded, and, on the meta device, before the network is allocated."""
        want = {k: tuple(t.shape) for k, t in skeleton.state_dict().items()}
        differ = [k for k in sorted(want.keys() | shapes.keys()) if want.get(k) != shapes.get(k)]
        if differ:
            k = differ[0]
            raise ShapeMismatch(
                f"{folder}: its weights do not match its config.json (backbone {kwargs.get('backbone')}, img_size "
                f"{kwargs.get('img_size')}, head_hidden {kwargs.get('head_hidden')}): {len(differ)} tensor(s) differ, "
                f"e.g. {k}: the config builds {want.get(k, 'nothing')}, the weights hold {shapes.get(k, 'nothing')}. "
                "Refused before its weights were loaded; copy or download the whole member folder again")
