"""Members in use: :func:`load_model` (a member folder's network, verified, ready for inference on a device) and
:class:`Member` (the handle the ensemble and the demo hold: its config.json read at once, its network loaded on first
use). Importing this module does not import PyTorch (the ONNX backends never build a network).

It sits above both ``zoo.members`` (the member on disk) and ``zoo.model`` (the network), which import nothing from
here: ``zoo.model`` depends on ``zoo.members``, never the reverse.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.members import WEIGHTS, MemberError, pickles_note, read_member_config


def load_model(folder: Path, device: str = "cpu"):
    """A member's network (a ``zoo.BoneClassifier``), ready for inference on ``device``, through the one verified
    load (:func:`zoo.members.read_verified`); a member that cannot be used is a :class:`MemberError` that says why.
    PyTorch is imported here, not when this module is."""
    from safetensors import SafetensorError

    from zoo.inference import prepare_model, resolve_device
    from zoo.model import BoneClassifier
    from zoo.registry import list_backbones

    backbone = read_member_config(folder)["backbone"]
    if backbone not in list_backbones():
        raise MemberError(f"{Path(folder) / 'config.json'}: backbone {backbone!r} is not registered here (a plugin "
                          "package not installed, or a newer bone-zoo?); `python train_all.py --list-models` lists "
                          "the registered ones")
    weights = Path(folder) / WEIGHTS
    if not weights.is_file():
        raise MemberError(f"{weights}: missing;{pickles_note(Path(folder))}")
    try:
        return prepare_model(BoneClassifier.load(folder), resolve_device(str(device)))
    except MemberError:  # its own message says what happened and what to do
        raise
    except SafetensorError as exc:
        raise MemberError(f"{weights}: damaged (truncated or not a safetensors file: {exc}); copy or download the "
                          "member again") from exc
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise MemberError(f"{folder}: cannot load this member: its weights do not match its config.json "
                          f"(trained with another image size, head or backbone version?): {first}") from exc


@dataclass
class Member:
    """A member folder; its config.json is read at once, its network only when first used (the ONNX backends never
    build it)."""

    name: str
    folder: Path
    _model: Any = None  # a zoo.BoneClassifier once loaded
    device: str = "cpu"

    @functools.cached_property
    def config(self) -> dict:
        return self._model.get_config() if self._model is not None else read_member_config(self.folder)

    @property
    def model(self):
        if self._model is None:
            self._model = load_model(self.folder, self.device)
        return self._model

    @property
    def img_size(self) -> int:
        return int(self.config["img_size"])

    @property
    def threshold(self) -> float:
        return float(self.config.get("threshold", 0.5))

    @property
    def calibrator(self):
        """The member's calibration (zoo.calibration.Calibrator; the identity for members trained before it)."""
        from zoo.calibration import Calibrator

        return Calibrator.from_dict(self.config.get("calibration"))

    def val_predictions(self):
        """Its validation studies as trained (``id, label, prob``), or None if the folder has no val_predictions.csv."""
        import pandas as pd

        f = self.folder / "val_predictions.csv"
        return pd.read_csv(f, dtype={"id": str}) if f.is_file() else None

    @property
    def group(self) -> str:
        """The name shared by the k fold members of one backbone (``resnet10t-fold2`` -> ``resnet10t``); a member
        trained on one split is its own group."""
        t = self.config.get("training") or {}
        suffix = f"-fold{t.get('fold', 0)}"
        return self.name[: -len(suffix)] if int(t.get("folds", 1) or 1) > 1 and self.name.endswith(suffix) \
            else self.name

    @property
    def val_auc(self) -> float:
        auc = (self.config.get("metrics") or {}).get("val_auc")
        return float(auc) if auc is not None and not math.isnan(float(auc)) else float("nan")
