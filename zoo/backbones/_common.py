"""The source factories: timm and torchvision models with a 1-channel stem and pooled features.

A backbone whose builder is only a docstring is built here from its spec (``source="timm:NAME"`` or
``"torchvision:NAME"``); :func:`timm_backbone` and :func:`torchvision_backbone` are also there for builders with a body.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.models import adapt_input_conv
from torch import nn

from zoo.registry import BackboneSpec, register_source


class PretrainedUnavailable(RuntimeError):
    """Pretrained weights were asked for but could not be fetched or read."""


def _check_weights_file(weights: str | Path) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise PretrainedUnavailable(f"pretrained weights file not found: {path}")
    if path.suffix != ".safetensors":
        raise PretrainedUnavailable(
            f"{path}: only .safetensors weight files are read (weights are data, never pickles). Convert it once "
            "where you trust it: `python -c \"import torch,safetensors.torch as s; "
            "s.save_file(torch.load('IN', weights_only=True), 'OUT.safetensors')\"`"
        )
    return path


def timm_backbone(
    name: str,
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    img_size: int | None = None,
    pass_img_size: bool = False,
) -> nn.Module:
    """A timm model with ``in_chans=1`` and no classifier (``num_classes=0`` gives pooled features).

    ``weights`` is a local ``.safetensors`` file (e.g. the ``model.safetensors`` of the timm model's Hub repo) for
    machines without internet; timm then loads it exactly as it would a download. Either way timm's
    ``adapt_input_conv`` turns the RGB stem into a 1-channel one by summing the kernels over the colour channels.
    ``pass_img_size`` is for models whose shape depends on the input size (ViT position embeddings).
    """
    kwargs: dict = {"num_classes": 0, "in_chans": 1}
    if pass_img_size and img_size:
        kwargs["img_size"] = img_size
    if weights is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(_check_weights_file(weights))}
        pretrained = True
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        if not pretrained:
            raise
        raise PretrainedUnavailable(
            f"could not load ImageNet weights for {name!r} ({type(exc).__name__}: {exc}). Offline? Pass "
            "--no-pretrained, or --pretrained-weights DIR with NAME.safetensors files downloaded elsewhere."
        ) from exc
    # with num_classes=0 the pooled output has head_hidden_size features (differs from num_features on MobileNetV3)
    model.num_features = int(getattr(model, "head_hidden_size", None) or model.num_features)
    return model


def sum_rgb_kernels(conv: nn.Conv2d) -> nn.Conv2d:
    """A 1-channel copy of an RGB conv; its kernel comes from timm's ``adapt_input_conv`` (the sum of the colour
    kernels), as timm does for its own models."""
    new = nn.Conv2d(
        1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(1, conv.weight))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def torchvision_backbone(
    name: str, *, stem: str, head: str, pretrained: bool = False, weights: str | Path | None = None
) -> nn.Module:
    """A torchvision classifier turned into a 1-channel feature extractor.

    ``stem`` is the dotted path of the first conv, ``head`` that of the final Linear (replaced by Identity; its
    ``in_features`` become ``num_features``). ``pretrained`` takes torchvision's default ImageNet weights;
    ``weights`` a local ``.safetensors`` state dict of the original RGB model.
    """
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained and weights is None else None)
    except (OSError, RuntimeError, ValueError) as exc:
        raise PretrainedUnavailable(
            f"could not download torchvision weights for {name!r} ({exc}). Offline? Pass --no-pretrained or "
            "--pretrained-weights DIR."
        ) from exc
    if weights is not None:
        state = load_file(str(_check_weights_file(weights)))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            warnings.warn(
                f"{name}: {weights} left {len(missing)} weights at random init and ignored {len(unexpected)} "
                f"(first: {(missing + unexpected)[:3]})",
                stacklevel=2,
            )
    parent_path, _, attr = stem.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, sum_rgb_kernels(getattr(parent, attr)))
    head_parent_path, _, head_attr = head.rpartition(".")
    head_parent = model.get_submodule(head_parent_path) if head_parent_path else model
    model.num_features = getattr(head_parent, head_attr).in_features
    setattr(head_parent, head_attr, nn.Identity())
    return model


@register_source("timm")
def from_timm(spec: BackboneSpec, *, pretrained: bool = False, weights: str | Path | None = None,
              img_size: int | None = None) -> nn.Module:
    """``timm:NAME``; a ``sized`` spec is built for ``img_size`` (default its native size)."""
    return timm_backbone(spec.model_name, pretrained=pretrained, weights=weights,
                         img_size=(img_size or spec.native_size) if spec.sized else None, pass_img_size=spec.sized)


@register_source("torchvision")
def from_torchvision(spec: BackboneSpec, *, pretrained: bool = False, weights: str | Path | None = None,
                     img_size: int | None = None) -> nn.Module:
    """``torchvision:NAME``, with the spec's ``first_conv`` made 1-channel and its ``classifier`` removed."""
    if not (spec.first_conv and spec.classifier):
        raise TypeError(f"backbone {spec.name!r} ({spec.origin}): a torchvision source needs first_conv= and "
                        "classifier= in its @register_backbone (dotted paths of the stem conv and the final Linear)")
    return torchvision_backbone(spec.model_name, stem=spec.first_conv, head=spec.classifier, pretrained=pretrained,
                                weights=weights)
