"""The backbone registry: one decorated builder per backbone, found by name or wildcard.

Built-in backbones live in ``zoo/backbones/<family>.py``; other packages add theirs through the entry-point group
``bone_zoo.backbones`` (loaded lazily, once, the first time the registry is asked anything).
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from zoo.plugins import load_entry_points

ENTRY_POINT_GROUP = "bone_zoo.backbones"


@dataclass(frozen=True)
class BackboneSpec:
    """What the zoo knows about one backbone, besides how to build it."""

    name: str
    builder: Callable[..., nn.Module]
    source: str  # where the architecture (and its pretrained weights) come from, e.g. "timm:regnety_016"
    cam_layer: str  # dotted path of the Grad-CAM target layer inside the built backbone
    native_size: int = 224  # the input size its pretrained weights were trained at
    reshape: str | None = None  # "vit" for token outputs that need a reshape for CAMs
    description: str = ""
    origin: str = ""  # "module:function (file:line)", for error messages

    @property
    def family(self) -> str:
        return self.builder.__module__.rsplit(".", 1)[-1]

    def build(self, *, pretrained: bool = False, weights: str | None = None, img_size: int | None = None) -> nn.Module:
        model = self.builder(pretrained=pretrained, weights=weights, img_size=img_size)
        if not isinstance(getattr(model, "num_features", None), int):
            raise TypeError(f"backbone {self.name!r} ({self.origin}) must return a module with an int `num_features`")
        return model


_REGISTRY: dict[str, BackboneSpec] = {}
_state = {"builtins": False, "plugins": False}


def _origin(fn: Callable) -> str:
    try:
        where = f"{inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]}"
    except (OSError, TypeError):
        where = "unknown file"
    return f"{fn.__module__}:{fn.__qualname__} ({where})"


def register_backbone(
    *, source: str, cam_layer: str, native_size: int = 224, reshape: str | None = None, name: str | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``fn(pretrained=False, weights=None, img_size=None) -> nn.Module`` under its name.

    The module it returns takes ``(B, 1, H, W)`` and gives pooled features ``(B, num_features)``.
    """

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        doc = (inspect.getdoc(fn) or "").strip().splitlines()
        spec = BackboneSpec(
            name=key,
            builder=fn,
            source=source,
            cam_layer=cam_layer,
            native_size=native_size,
            reshape=reshape,
            description=doc[0] if doc else "",
            origin=_origin(fn),
        )
        old = _REGISTRY.get(key)
        if old is not None and old.origin != spec.origin:
            raise ValueError(f"backbone {key!r} is registered twice: by {old.origin} and by {spec.origin}")
        _REGISTRY[key] = spec
        fn.spec = spec  # type: ignore[attr-defined]
        return fn

    return deco


def _ensure_loaded() -> None:
    if not _state["builtins"]:
        _state["builtins"] = True
        importlib.import_module("zoo.backbones")
    if not _state["plugins"]:
        _state["plugins"] = True
        load_plugins()


def load_plugins(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Import every entry point of ``group``; their ``@register_backbone`` decorators register them.

    An entry point must name a builder decorated with :func:`register_backbone`. Returns the names loaded.
    A plugin that fails to import, or names an undecorated object, is reported with a warning and skipped.
    """
    return load_entry_points(group, lambda obj: obj.spec.name if isinstance(getattr(obj, "spec", None), BackboneSpec)
                             else None, "register_backbone")


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_backbones(pattern: str | list[str] | None = None) -> list[str]:
    """Registered names matching a wildcard pattern (or any of several), naturally sorted."""
    _ensure_loaded()
    names = sorted(_REGISTRY, key=_natural_key)
    if pattern is None:
        return names
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


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
    """One line per registered backbone: name, source, description (for --list-models)."""
    return "\n".join(f"{n:24s} {_REGISTRY[n].source:34s} {_REGISTRY[n].description}" for n in list_backbones(pattern))


def get_backbone(name: str) -> BackboneSpec:
    """The spec of a registered backbone; an unknown name fails with the closest registered names."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(
            f"unknown backbone {name!r}.{hint} `python train_all.py --list-models` shows all {len(_REGISTRY)}."
        ) from None


def create_backbone(
    name: str, *, pretrained: bool = False, weights: str | None = None, img_size: int | None = None
) -> nn.Module:
    """Build a registered backbone: 1-channel input, pooled features of size ``model.num_features``."""
    return get_backbone(name).build(pretrained=pretrained, weights=weights, img_size=img_size)
