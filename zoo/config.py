"""TrainConfig: how one member is trained. Each field carries its own flag (help, choices, type in its metadata), so
``zoo.cli.train`` generates the train flags from it and a new setting is one line here. No PyTorch import, so the
CLI's ``--help`` is instant; the trainer is :mod:`zoo.train`.

A config is resolved once, in one order (:func:`resolve`): these defaults, then the recipe (:mod:`zoo.recipes`), then
the flags the user gave, then what was decided after them (the backbone, the fold, the budget planner); it is frozen
afterwards, and a derived one is ``dataclasses.replace(cfg, ...)``.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from zoo.recipes import RECIPES, get_recipe, recipe_values
from zoo.runtime import PRECISIONS, precision_name
from zoo.tracking import LOG_WITH

OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("step", "cosine")
KEEPS = ("auto", "best", "last")


def opt(default: Any, help: str, **flag: Any) -> Any:
    """A field with its flag: ``help`` plus argparse keywords (``choices``, ``metavar``, ``type``, ``action``,
    ``nargs``); ``flag=False`` for a field with no flag."""
    if callable(default):
        return field(default_factory=default, metadata={"help": help, **flag})
    return field(default=default, metadata={"help": help, **flag})


@dataclass(frozen=True)
class TrainConfig:
    """How one member is trained. Defaults are the seed project's recipe."""

    backbone: str = opt("regnet_x_800mf", "the member's backbone", flag=False)  # --models chooses
    epochs: int = opt(20, "epochs per member")
    img_size: int = opt(512, "square input size in px")
    batch_size: int = opt(16, "batch size")
    recipe: str = opt("seed", "the preset these values came from (zoo.recipes)", flag=False)  # --recipe chooses
    optimizer: str = opt("adam", "adam or adamw", choices=OPTIMIZERS)
    lr: float = opt(1e-4, "learning rate")
    weight_decay: float = opt(0.0, "weight decay (adamw: not on norms and biases)")
    scheduler: str = opt("step", "step: StepLR per epoch; cosine: linear warm-up then cosine decay per step",
                         choices=SCHEDULERS)
    step_size: int = opt(5, "StepLR step in epochs")
    gamma: float = opt(0.1, "StepLR factor")
    warmup_epochs: float = opt(0.0, "cosine schedule warm-up in epochs")
    ema_decay: float = opt(0.0, "weight EMA decay (timm ModelEmaV3), validated and exported; 0 = off")
    patience: int = opt(0, "early stop after N epochs without a better val AUC; 0 = off")
    keep: str = opt("auto", "the epoch whose weights the member keeps: best (its validation AUC), last (the last epoch "
                    "trained; with --patience, the one it stopped at), auto: last where a box loss acts (--boxes "
                    "matched training positives, --box-weight > 0: the CAMs go on moving into the boxes after the "
                    "validation AUC peaks: bench/README.md), else best",
                    choices=KEEPS)
    val_fraction: float = opt(0.2, "share of labelled studies held out for validation, split by study, without "
                              "--folds (of those left after the calibration split)")
    # zoo.calibration.calibration_split / auto_calibration_fraction
    calibration_fraction: float | None = opt(
        None, "share of the labelled studies held out of training and of every selection step (epoch, thresholds, "
        "calibrations, combiner), grouped by patient (else study) and stratified; each member predicts them "
        "(calibration_predictions.csv) and predict.py --triage certifies its error rate on them alone. 0 = off "
        "(--triage then gives no guarantee). Default: 0.2 when that holds at least 150 studies, else 0", metavar="F")
    seed: int = opt(0, "seed for the split, init, shuffling and augmentation")
    pretrained: bool = opt(False, "start from ImageNet weights (timm/torchvision). Without a recipe value: on with "
                           "--data when the weights are reachable (cached, or the Hub answers within seconds), else "
                           "random init with a warning")
    pretrained_weights: str | None = opt(None, "offline ImageNet weights: a .safetensors file, or a folder of "
                                         "<backbone>.safetensors files", metavar="PATH")
    rotation: float = opt(30.0, "augmentation: max rotation in degrees")
    hflip: bool = opt(True, "augmentation: horizontal flip")
    translate: float = opt(0.1, "augmentation: max translation, fraction of the size")
    crop_scale: float = opt(1.0, "augmentation: random resized crop keeping at least this share of the area; 1 = off")
    brightness: float = opt(0.0, "augmentation: brightness jitter, factor in [1 - b, 1 + b]")
    contrast: float = opt(0.0, "augmentation: contrast jitter, factor in [1 - c, 1 + c]")
    gamma_jitter: float = opt(0.0, "augmentation: gamma jitter, gamma in [1 - g, 1 + g]")
    label_smoothing: float = opt(0.0, "BCE label smoothing: targets y(1 - e) + e/2")
    mixup: float = opt(0.0, "mixup Beta(a, a) parameter; 0 = off")
    boxes: str | None = opt(None, "COCO boxes (or polygons, by their bbox) of training images, matched by file name, "
                            "or a YOLO folder (labels/*.txt at any depth, 'class cx cy w h' normalised, one class "
                            "id: the findings, matched by file stem and folders): "
                            "on annotated positives an auxiliary loss (a soft pointing game and the map's sign) "
                            "pulls each member's Grad-CAM into the boxes "
                            "(zoo.boxes); other images train as without; validation and test never train on them "
                            "(each member's pointing game on up to 200 of its abnormal validation images with these "
                            "boxes is recorded)",
                            metavar="FILE.coco.json|DIR")
    box_weight: float = opt(10.0, "with --boxes: weight of that loss beside the BCE (bench/README.md)")
    box_warmup: float = opt(0.0, "with --boxes: epochs over which its weight ramps up from 0 (with --keep best, "
                            "epochs trained before it acts can be the ones kept)")
    folds: int = opt(1, "K-fold cross-validation: K members per backbone, every labelled study validated once; "
                     "out-of-fold predictions go to OUT/oof_predictions.csv and fit the ensemble (1: one validation "
                     "split)", metavar="K")
    fold: int = opt(0, "which fold this member validates on (0 .. folds-1)", flag=False)
    head_hidden: list[int] = opt(lambda: [1024, 512], "MLP head widths", nargs="+")
    dropout: float = opt(0.3, "head dropout")
    pos_weight: float | None = opt(None, "BCE positive weight (default: n_neg/n_pos of the train split)")
    mean: float = opt(0.449, "input normalisation mean", flag=False)
    std: float = opt(0.226, "input normalisation std", flag=False)
    mixed_precision: str = opt("auto", "auto: bf16 where native (GPUs that support it, CPUs with AVX512-BF16 or "
                               "AMX), else fp32 (alias: no); fp16 (GPU only) is trained with loss scaling",
                               choices=PRECISIONS, type=precision_name)
    grad_accum: int = opt(1, "accumulate gradients over N batches per optimizer step (effective batch = batch size x "
                          "N x processes)", metavar="N")
    micro_batch: int = opt(0, "forward/backward N images at a time and accumulate to --batch-size (0 = auto: 8 on "
                           "CPU, saves memory and time; the whole batch on GPU)", metavar="N")
    compile: bool = opt(False, "torch.compile the model (slow first epoch)", action="store_true")
    device: str = opt("auto", "cuda, cuda:1, cpu, mps or auto (zoo.runtime.resolve_device)")
    workers: int = opt(-1, "DataLoader workers, -1 = auto (0 on CPU, up to 8 on CUDA)")
    cache_dir: str | None = opt(None, "decoded-image cache (default ~/.cache/bone-zoo/images; '' = in memory)")
    cache_max_gb: float | None = opt(None, "bound of the decoded-image cache on disk, least recently used entries "
                                     "evicted (default: BONE_ZOO_CACHE_MAX_GB or 20)")
    quiet: bool = opt(False, "no progress bars or per-epoch lines", action="store_true")
    log_with: list[str] | None = opt(None, "experiment trackers (Accelerate's): tensorboard, mlflow, wandb or all (the "
                                     "installed ones); each member is one run grouped by the run folder's name, with "
                                     "its config, per-epoch loss, val AUC/kappa/ECE, lr, images/s and the leaderboard. "
                                     "Default: none (nothing logged or imported)", nargs="+", choices=LOG_WITH,
                                     metavar="TRACKER")
    project_dir: str | None = opt(None, "with --log-with: where TensorBoard and the local MLflow store write "
                                  "(MLFLOW_TRACKING_URI, when set, is used instead) (default ./runs)", metavar="DIR")
    export: bool = opt(True, "write model.onnx and a static int8 model.int8.onnx beside each finished member, the "
                       "int8 one calibrated and checked on the member's own validation images (zoo.onnx; predict.py "
                       "--backend auto uses them); --no-export skips it")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


# how it ran, not what was trained: not in config.json
RUNTIME_FIELDS = ("device", "workers", "cache_dir", "cache_max_gb", "quiet", "log_with", "project_dir", "export")
# what ``--budget-minutes`` chooses when the flag is not given (zoo.budget.Fixed)
PLANNED_FIELDS = ("img_size", "folds", "epochs")


def _default(f: Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def flag_type(cls: type, f: Field) -> type:
    """The argparse type of field ``f`` of dataclass ``cls``, from its real annotation (``typing.get_type_hints``):
    ``int``, ``float``, ``str``, ``bool``; ``X | None`` is X; ``list[X]`` (with ``nargs``) is X. Anything else is a
    TypeError naming the field: give the flag a ``type=`` in its metadata, or teach this function the type."""
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) is list and len(typing.get_args(hint)) == 1:
        hint = typing.get_args(hint)[0]
    if hint in (int, float, str, bool):
        return hint
    raise TypeError(f"{cls.__name__}.{f.name}: no flag type for the annotation {hint!r}; give its flag a type= in "
                    "the field's metadata")


def flag_fields() -> list[Field]:
    """The TrainConfig fields that are train flags (``--name-with-dashes``)."""
    return [f for f in fields(TrainConfig) if f.metadata.get("flag", True)]


def unset_by_default(f: Field) -> bool:
    """Whether the flag of ``f`` defaults to None (not given): the recipe, the planner or a rule decides."""
    return any(f.name in r.values for r in RECIPES.values()) or f.name in PLANNED_FIELDS or _default(f) is None


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :func:`flag_fields` field, from its metadata: help (with each recipe's value, or the default),
    choices, type, metavar, nargs, action. A flag left out parses to None when a recipe or the planner sets it, else
    to TrainConfig's default."""
    for f in flag_fields():
        meta = dict(f.metadata)
        help_text, unset, default = meta.pop("help"), unset_by_default(f), _default(f)
        in_recipes = recipe_values(f.name)
        if in_recipes:
            help_text += f" (recipe: {in_recipes})"
        elif default is not None:
            help_text += f" (default {default}" + ("; --budget-minutes may choose)" if unset else ")")
        if "action" not in meta and "type" not in meta:
            kind = flag_type(TrainConfig, f)
            meta["action" if kind is bool else "type"] = argparse.BooleanOptionalAction if kind is bool else kind
        parser.add_argument("--" + f.name.replace("_", "-"), default=None if unset else default,
                            help=help_text.replace("%", "%%"), **meta)


def config_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The config flags in parsed ``args`` that hold a value: given, or a parser default of a field no recipe or
    planner sets (a flag that defaults to None and was not given is left out, so the recipe's value stays)."""
    return {f.name: getattr(args, f.name) for f in flag_fields() if getattr(args, f.name, None) is not None}


def resolve(recipe: str, given: Mapping[str, Any] | None = None, **decided: Any) -> TrainConfig:
    """The frozen config: TrainConfig's defaults <- ``recipe``'s values <- ``given`` (the flags the user gave) <-
    ``decided`` (backbone, fold, the budget planner's choices: they never contradict a given flag)."""
    r = get_recipe(recipe)
    unknown = set(given or {}) - set(TrainConfig.field_names())
    if unknown:
        raise ValueError(f"not TrainConfig fields: {', '.join(sorted(unknown))}")
    return TrainConfig(**{**r.values, **(given or {}), **decided, "recipe": r.name})
