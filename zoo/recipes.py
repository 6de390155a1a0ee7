"""Recipes: named, documented training presets. A recipe is a set of :class:`zoo.config.TrainConfig` values; a flag
given on the command line wins over the recipe. No PyTorch import (``train_all.py --help`` lists them).

- ``seed``: the original class project, exactly: Adam 1e-4, StepLR(5, 0.1), 20 epochs at 512 px, rotation ±30°,
  horizontal flip, translation 0.1, weighted BCE, the 1024-512 head with dropout 0.3.
- ``modern`` (the default with ``--data``): what small-data image classification does today, from library parts:
  AdamW with decoupled weight decay, linear warm-up then cosine decay per step, an exponential moving average of
  the weights (``timm.utils.ModelEmaV3``) that is validated and exported, X-ray-appropriate augmentation (random
  resized crop, brightness/contrast/gamma, plus the seed's rotation/flip/translation) and label smoothing.
  Mixup is available (``--mixup``) but off: it has not been measured (bench/README.md).
- ``synthetic``: the seed recipe made quick for the built-in synthetic radiographs (3 epochs at 96 px, lr 1e-3,
  random init: :data:`SYNTHETIC_SPEED`); its budget keeps those and the seed's one backbone (min_models = max_models
  = 1). It is what a run without ``--data`` trains by default: there SYNTHETIC_SPEED applies on top of whichever
  recipe (``seed`` unless ``--recipe`` says otherwise, and that is the name its members record, as before #20).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    values: dict[str, Any] = field(default_factory=dict)  # TrainConfig field -> value
    # what --budget-minutes may choose (zoo.budget): backbones in order of preference (min_models..max_models of
    # them), folds and image sizes in order of preference, epochs between min_epochs and max_epochs
    budget: dict[str, Any] = field(default_factory=dict)


SEED = Recipe("seed", "the original project: Adam 1e-4, StepLR(5, 0.1), 20 epochs at 512 px, rotate/flip/translate", {
    "optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "scheduler": "step", "step_size": 5, "gamma": 0.1,
    "warmup_epochs": 0.0, "epochs": 20, "img_size": 512, "ema_decay": 0.0, "crop_scale": 1.0, "brightness": 0.0,
    "contrast": 0.0, "gamma_jitter": 0.0, "label_smoothing": 0.0, "mixup": 0.0, "rotation": 30.0, "hflip": True,
    "translate": 0.1,
}, budget={"models": ["regnet_x_800mf"], "min_models": 1, "max_models": 1, "folds": [1], "sizes": [512],
           "min_epochs": 1, "max_epochs": 20})

MODERN = Recipe("modern", "AdamW 1e-3 + warm-up/cosine, weight EMA, crop/brightness/contrast/gamma augmentation, "
                "label smoothing 0.1", {
                    "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "scheduler": "cosine",
                    "warmup_epochs": 1.0, "epochs": 30, "img_size": 256, "ema_decay": 0.998, "crop_scale": 0.6,
                    "brightness": 0.2, "contrast": 0.2, "gamma_jitter": 0.2, "label_smoothing": 0.1, "mixup": 0.0,
                    "rotation": 20.0, "hflip": True, "translate": 0.05,
                }, budget={"models": ["resnet10t", "regnetx_002", "regnety_002"], "min_models": 2, "max_models": 3,
                           "folds": [5, 4, 3], "sizes": [256, 224, 192, 160, 128], "min_epochs": 10,
                           "max_epochs": 20})

# without --data, on top of whichever recipe (a flag given still wins): quick, and no ImageNet weights to fetch
SYNTHETIC_SPEED: dict[str, Any] = {"epochs": 3, "img_size": 96, "lr": 1e-3, "pretrained": False}
SYNTHETIC = Recipe("synthetic", "the seed recipe made quick for the built-in synthetic radiographs: 3 epochs at 96 "
                   "px, lr 1e-3, random init",
                   {**SEED.values, **SYNTHETIC_SPEED},
                   budget={**SEED.budget, "sizes": [96], "min_epochs": 3, "max_epochs": 3})

RECIPES: dict[str, Recipe] = {r.name: r for r in (SEED, MODERN, SYNTHETIC)}
DEFAULT_RECIPE = "modern"  # with --data
SYNTHETIC_RECIPE = "seed"  # without --data, with SYNTHETIC_SPEED on top (so it trains the synthetic recipe)


def recipe_values(name: str) -> str:
    """``seed 20, modern 30, synthetic 3``: each recipe's value of the TrainConfig field ``name`` ("" if none sets it),
    for the flag's --help."""
    return ", ".join(f"{r.name} {r.values[name]}" for r in RECIPES.values() if name in r.values)


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    return RECIPES[name]


def describe_recipes() -> str:
    return "; ".join(f"{r.name}: {r.summary}" for r in RECIPES.values())
