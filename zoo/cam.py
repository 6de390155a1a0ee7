"""Class activation maps for any registered backbone through pytorch-grad-cam, per member and fused."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from torch import nn

from zoo.data.transforms import to_input
from zoo.inference import autocast, resolve_precision
from zoo.model import BoneClassifier

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM, "layercam": LayerCAM,
           "xgradcam": XGradCAM}
LABELS = {"Grad-CAM": "gradcam", "Grad-CAM++": "gradcam++", "EigenCAM": "eigencam", "LayerCAM": "layercam",
          "XGrad-CAM": "xgradcam"}


def resolve_layer(module: nn.Module, path: str) -> nn.Module:
    """``get_submodule`` that also takes negative indices (``blocks.-1.norm1``)."""
    for part in path.split("."):
        module = module[int(part)] if part.lstrip("-").isdigit() else getattr(module, part)  # type: ignore[index]
    return module


def cam_target(model: BoneClassifier):
    """The backbone's CAM layer (its spec's ``cam_layer``) and the spec's ``reshape_transform`` bound to the
    backbone, turning that layer's output into (B, C, h, w) (None where it is already that): what every CAM, the
    Grad-CAM here and the differentiable one of :mod:`zoo.boxes`, hooks."""
    layer = resolve_layer(model.backbone, model.spec.cam_layer)
    own, backbone = model.spec.reshape_transform, model.backbone
    return layer, (None if own is None else lambda t: own(t, backbone))


def _float(reshape=None):
    """pytorch-grad-cam's ``reshape_transform``: the backbone's own (tokens to a grid), then fp32 (NumPy has no
    bf16) for activations and gradients alike."""
    return lambda t: (reshape(t) if reshape is not None else t).float()


def compute_cams(model: BoneClassifier, images_u8: np.ndarray, method: str = "gradcam",
                 precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """CAMs of the abnormality logit for a batch of preprocessed images (uint8 ``(n, S, S)``, the model's size) and
    the probabilities of the same forward pass: ``(cams float32 (n, S, S) in [0, 1], probabilities (n,))``.

    One forward and one backward for the whole batch. The target layer and its reshape (a transformer's tokens to a
    grid) come from the backbone's spec. ``precision`` as in :func:`zoo.inference.resolve_precision`.
    """
    key = LABELS.get(method, method).lower()
    if key not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; one of {', '.join(LABELS)}")
    layer, reshape = cam_target(model)
    device = next(model.parameters()).device
    x = to_input(torch.from_numpy(np.asarray(images_u8))[:, None].to(device), model.mean, model.std)
    model.eval()
    with METHODS[key](model=model, target_layers=[layer], reshape_transform=_float(reshape)) as cam, \
            autocast(device, resolve_precision(precision, device)):
        out = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(1)] * len(x))
        probs = torch.sigmoid(cam.outputs.detach().float().reshape(-1)).cpu().numpy()
    out = np.nan_to_num(np.asarray(out, dtype=np.float32), nan=0.0)
    return np.clip(out, 0.0, 1.0), probs


def compute_cam(model: BoneClassifier, image_u8: np.ndarray, method: str = "gradcam") -> np.ndarray:
    """CAM (float32 in [0, 1], no NaN) of the abnormality logit for one preprocessed image (uint8, model's size)."""
    return compute_cams(model, np.asarray(image_u8)[None], method)[0][0]


def overlay(image_u8: np.ndarray, cam: np.ndarray, weight: float = 0.45) -> np.ndarray:
    """RGB uint8 heatmap over the grayscale image (stacked to RGB, float in [0, 1] as show_cam_on_image wants)."""
    if cam.shape != image_u8.shape:
        cam = resize_cam(cam, image_u8.shape[0])
    rgb = np.repeat((image_u8.astype(np.float32) / 255.0)[..., None], 3, axis=2)
    return show_cam_on_image(rgb, cam, use_rgb=True, image_weight=1.0 - weight)


def resize_cam(cam: np.ndarray, size: int) -> np.ndarray:
    if cam.shape == (size, size):
        return cam
    return np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize((size, size),
                                                                                 Image.Resampling.BILINEAR))


def fuse_cams(cams: Sequence[np.ndarray], probs: Sequence[float], size: int | None = None) -> np.ndarray:
    """The ensemble heatmap: members' CAMs (each normalised to [0, 1]) averaged with weights = their probabilities,
    ``sum_m p_m * cam_m / sum_m p_m`` (plain mean when every p_m is 0), at ``size`` (default: the largest)."""
    size = size or max(c.shape[0] for c in cams)
    stack = np.stack([resize_cam(c, size) for c in cams])
    w = np.asarray(probs, dtype=np.float64)
    w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1 / len(w))
    return np.clip(np.tensordot(w, stack, axes=1).astype(np.float32), 0.0, 1.0)
