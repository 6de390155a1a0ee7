"""The backbone registry: one decorated function per backbone, found by name or wildcard.

Built-in backbones live in ``zoo/backbones/<family>.py``; other packages add theirs through the entry-point group
``bone_zoo.backbones`` (loaded lazily, once, the first time the registry is asked anything). The mechanics (entry
points, duplicates, suggestions, wildcards) are the one :class:`zoo.plugins.Registry` the combiners use too.

A backbone is described once, in its decorator: ``source="timm:regnetx_002"`` says where the architecture and its
pretrained weights come from. A builder whose body is only its docstring is built from that source by the source's
factory (:data:`SOURCES`: ``timm`` and ``torchvision``, in ``zoo/backbones/_common.py``); a builder with a body
(a plugin's own network) returns its module itself.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from zoo.plugins import Registry, origin
from zoo.recipes import RECIPES

ENTRY_POINT_GROUP = "bone_zoo.backbones"

# activations of the CAM layer and the built backbone -> (B, C, H, W) for Grad-CAM (transformers' tokens to a grid)
ReshapeTransform = Callable[[torch.Tensor, nn.Module], torch.Tensor]


def vit_reshape(tokens: torch.Tensor, backbone: nn.Module) -> torch.Tensor:
    """ViT block output ``(B, prefix + gh * gw, C)`` -> ``(B, C, gh, gw)`` for Grad-CAM: the prefix tokens (class,
    registers) dropped, the patch tokens laid out on the backbone's patch grid. (Here, not in zoo.backbones.vit, so
    the deprecated ``reshape="vit"`` maps to it without an import cycle.)"""
    gh, gw = backbone.patch_embed.grid_size
    prefix = getattr(backbone, "num_prefix_tokens", 1)
    return tokens[:, prefix:, :].reshape(tokens.size(0), gh, gw, tokens.size(2)).permute(0, 3, 1, 2)


RESHAPES: dict[str, ReshapeTransform] = {"vit": vit_reshape}  # the deprecated ``reshape=NAME`` of older plugins


def recipe_sizes() -> set[int]:
    """Every image size a recipe trains at or its budget may choose: the native-size warning never fires for them."""
    return {s for r in RECIPES.values() for s in [r.values.get("img_size"), *r.budget.get("sizes", [])] if s}


def _docstring_only() -> None:
    """A builder like this one (a docstring and nothing else) is built from its spec's source."""


@dataclass(frozen=True)
class BackboneSpec:
    """What the zoo knows about one backbone, and how to build it."""

    name: str
    builder: Callable[..., nn.Module | None]
    source: str  # where the architecture (and its pretrained weights) come from, e.g. "timm:regnety_016"
    cam_layer: str  # dotted path of the Grad-CAM target layer inside the built backbone (negative indices allowed)
    native_size: int = 224  # the input size its pretrained weights were trained at (--list-models; a warning)
    reshape_transform: ReshapeTransform | None = None  # for CAM layers whose output is not (B, C, H, W)
    first_conv: str | None = None  # dotted path of the RGB stem conv a source factory adapts (torchvision)
    classifier: str | None = None  # dotted path of the final Linear a source factory removes (torchvision)
    sized: bool = False  # built for the configured image size (ViT position embeddings are resampled to it)
    description: str = ""
    origin: str = ""  # "module:function (file:line)", for error messages

    @property
    def reshape(self) -> str | None:
        """Deprecated (read-only): ``"vit"`` when the CAM reshape is :func:`vit_reshape`, else None; use
        ``reshape_transform``."""
        return next((k for k, fn in RESHAPES.items() if fn is self.reshape_transform), None)

    @property
    def family(self) -> str:
        return self.builder.__module__.rsplit(".", 1)[-1]

    @property
    def scheme(self) -> str:
        """The source's kind: ``"timm"`` of ``"timm:regnety_016"``."""
        return self.source.partition(":")[0]

    @property
    def model_name(self) -> str:
        """The source's own name of the model: ``"regnety_016"`` of ``"timm:regnety_016"``."""
        return self.source.partition(":")[2]

    @property
    def from_source(self) -> bool:
        """True when the builder is only a docstring, so the source's factory builds it."""
        code = getattr(self.builder, "__code__", None)
        return code is not None and code.co_code == _docstring_only.__code__.co_code

    def build(self, *, pretrained: bool = False, weights: str | None = None, img_size: int | None = None) -> nn.Module:
        kwargs = {"pretrained": pretrained, "weights": weights, "img_size": img_size}
        model = SOURCES.get(self.scheme)(self, **kwargs) if self.from_source else self.builder(**kwargs)
        if not isinstance(getattr(model, "num_features", None), int):
            raise TypeError(f"backbone {self.name!r} ({self.origin}) must return a module with an int `num_features`")
        if (pretrained or weights) and img_size and not self.size_transfers(img_size):
            warnings.warn(f"backbone {self.name!r}: its pretrained weights were trained at {self.native_size} px and "
                          f"it is used at {img_size} px; features may transfer poorly (--img-size closer to "
                          f"{self.native_size}, or --no-pretrained)", stacklevel=3)
        return model

    def size_transfers(self, img_size: int) -> bool:
        """Whether pretrained weights are used at a size they are known to transfer to: a recipe's own size, or from
        half to four times the native size (the seed project trained 224-px weights at 512 px)."""
        return img_size in recipe_sizes() or self.native_size / 2 <= img_size <= self.native_size * 4


BACKBONES: Registry[BackboneSpec] = Registry(
    "backbone", ENTRY_POINT_GROUP, builtins="zoo.backbones",
    hint="`python train_all.py --list-models` shows all {n}.", decorator="@zoo.register_backbone")
# how a docstring-only builder is built, per source scheme: fn(spec, *, pretrained, weights, img_size) -> module
SOURCES: Registry[Callable[..., nn.Module]] = Registry(
    "backbone source", builtins="zoo.backbones",
    hint="Registered: {names}; a builder from another source returns its module itself.")


def register_source(scheme: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: ``fn(spec, *, pretrained, weights, img_size)`` builds the docstring-only backbones of ``scheme``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        return SOURCES.add(scheme, fn, fn)

    return deco


def register_backbone(
    *, source: str, cam_layer: str, native_size: int = 224, reshape_transform: ReshapeTransform | None = None,
    first_conv: str | None = None, classifier: str | None = None, sized: bool = False, name: str | None = None,
    reshape: str | None = None,
) -> Callable[[Callable[..., nn.Module | None]], Callable[..., nn.Module | None]]:
    """Decorator: register a backbone under the function's name (or ``name``), with its one-line docstring.

    The function is ``fn(pretrained=False, weights=None, img_size=None) -> nn.Module``, or only a docstring, in which
    case ``source``'s factory builds it. The module takes ``(B, 1, H, W)`` and gives pooled features
    ``(B, num_features)``. ``reshape_transform(activations, backbone)`` turns the CAM layer's output into
    ``(B, C, H, W)`` where it is not (see :func:`vit_reshape`). ``reshape="vit"`` (the older spelling) still works,
    with a DeprecationWarning.
    """
    if reshape is not None:
        reshape_transform = _deprecated_reshape(reshape, reshape_transform)

    def deco(fn: Callable[..., nn.Module | None]) -> Callable[..., nn.Module | None]:
        doc = (inspect.getdoc(fn) or "").strip().splitlines()
        spec = BackboneSpec(
            name=name or fn.__name__, builder=fn, source=source, cam_layer=cam_layer, native_size=native_size,
            reshape_transform=reshape_transform, first_conv=first_conv, classifier=classifier, sized=sized,
            description=doc[0] if doc else "", origin=origin(fn),
        )
        BACKBONES.add(spec.name, spec, fn)
        fn.spec = spec  # type: ignore[attr-defined]
        return fn

    return deco


def _deprecated_reshape(reshape: str, given: ReshapeTransform | None) -> ReshapeTransform:
    if reshape not in RESHAPES or given is not None:
        raise ValueError(f"register_backbone(reshape={reshape!r}): give reshape_transform=fn(activations, backbone) "
                         f"instead (reshape= is deprecated and knows only {', '.join(map(repr, RESHAPES))})")
    warnings.warn(f"register_backbone(reshape={reshape!r}) is deprecated: use reshape_transform=zoo.registry."
                  f"{RESHAPES[reshape].__name__}", DeprecationWarning, stacklevel=3)
    return RESHAPES[reshape]


def load_plugins() -> list[str]:
    """Import every ``bone_zoo.backbones`` entry point (each must name a function decorated with
    :func:`register_backbone`); returns the names loaded. Broken or undecorated plugins are warned about, skipped."""
    return BACKBONES.load_plugins()


def list_backbones(pattern: str | list[str] | None = None) -> list[str]:
    """Registered names matching a wildcard pattern (or any of several), naturally sorted."""
    return BACKBONES.names(pattern)


def resolve_backbones(patterns: list[str]) -> list[str]:
    """Expand names and wildcards in order, without duplicates; an unmatched entry is an error that teaches."""
    out: list[str] = []
    for pat in patterns:
        hits = list_backbones(pat) if any(c in pat for c in "*?[") else [get_backbone(pat).name]
        if not hits:
            raise KeyError(f"no registered backbone matches {pat!r}; registered: {', '.join(list_backbones())}")
        out += [h for h in hits if h not in out]
    return out


def describe_backbones(pattern: str | list[str] | None = None) -> str:
    """One line per registered backbone: name, source, native size, description (for --list-models)."""
    specs = [get_backbone(n) for n in list_backbones(pattern)]
    return "\n".join(f"{s.name:24s} {s.source:34s} {s.native_size:4d} px  {s.description}" for s in specs)


def get_backbone(name: str) -> BackboneSpec:
    """The spec of a registered backbone; an unknown name fails with the closest registered names."""
    return BACKBONES.get(name)


def create_backbone(
    name: str, *, pretrained: bool = False, weights: str | None = None, img_size: int | None = None
) -> nn.Module:
    """Build a registered backbone: 1-channel input, pooled features of size ``model.num_features``."""
    return get_backbone(name).build(pretrained=pretrained, weights=weights, img_size=img_size)
