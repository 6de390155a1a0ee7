"""Hugging Face Hub model cards for zoo members and for a whole run (an ensemble repo)."""

from __future__ import annotations

import math
from dataclasses import asdict
from importlib.resources import files
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from zoo.config import TrainConfig
from zoo.recipes import RECIPES
from zoo.runtime import precision_name

# The Hub metadata of every bone-zoo card, defined once: zoo.model's PyTorchModelHubMixin class keywords and the cards
# rendered here (member cards add the backbone's name to MEMBER_TAGS, run cards "ensemble" to BASE_TAGS)
CARD_METADATA = {"library_name": "bone-zoo", "license": "apache-2.0", "pipeline_tag": "image-classification"}
REPO_URL = "https://github.com/bone-zoo/bone-zoo"
BASE_TAGS = ("bone-zoo", "radiology", "x-ray", "musculoskeletal")
MEMBER_TAGS = (*BASE_TAGS, "image-classification")
TEMPLATES = files("zoo") / "templates"  # Jinja templates (package data) for huggingface_hub's ModelCard.from_template
LIMITATIONS = (TEMPLATES / "limitations.md").read_text(encoding="utf-8")


def _template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _training(cfg: dict[str, Any]) -> dict[str, Any]:
    """The member's training record, with TrainConfig's defaults (the seed recipe, what older bone-zoo versions
    trained with) for fields it predates; {} when the member was not saved by training."""
    train = cfg.get("training") or {}
    return {**asdict(TrainConfig()), **train} if train else {}


def _optimizer(t: dict[str, Any]) -> str:
    if t["optimizer"] == "adamw":
        return f"AdamW (lr {_num(t['lr'])}, decoupled weight decay {_num(t['weight_decay'])})"
    decay = f", weight decay {_num(t['weight_decay'])}" if t["weight_decay"] else ""
    return f"{'Adam' if t['optimizer'] == 'adam' else t['optimizer']} (lr {_num(t['lr'])}{decay})"


def _schedule(t: dict[str, Any]) -> str:
    if t["scheduler"] == "cosine":
        return f"linear warm-up over {_num(t['warmup_epochs'])} epoch(s), then cosine decay, per optimizer step"
    if t["scheduler"] == "step":
        return f"StepLR (x{_num(t['gamma'])} every {t['step_size']} epochs)"
    return str(t["scheduler"])


def _ema(t: dict[str, Any]) -> str:
    d = t["ema_decay"]
    return f"decay {_num(d)} (timm ModelEmaV3; the EMA weights are validated and exported)" if d else "none"


def _kept(t: dict, metrics: dict) -> str:
    """Which epoch's weights these are (``--keep``; a member from before it kept the best validation AUC's)."""
    best = metrics.get("best_epoch", "?")
    kept = metrics.get("kept_epoch", best)
    if kept == best:
        return f"best epoch {best} by validation AUC, kept"
    last = " (the last trained)" if kept == metrics.get("epochs_run") else ""
    return f"kept epoch {kept}{last}, `--keep {t.get('keep', '?')}`; the best validation AUC was at epoch {best}"


def _augmentation(t: dict[str, Any]) -> str:
    parts = [f"random resized crop (area >= {_num(t['crop_scale'])})" if t["crop_scale"] < 1 else "",
             f"rotation ±{_num(t['rotation'])}°" if t["rotation"] else "",
             "horizontal flip" if t["hflip"] else "",
             f"translation {_num(t['translate'])}" if t["translate"] else "",
             f"brightness ±{_num(t['brightness'])}" if t["brightness"] else "",
             f"contrast ±{_num(t['contrast'])}" if t["contrast"] else "",
             f"gamma ±{_num(t['gamma_jitter'])}" if t["gamma_jitter"] else "",
             f"mixup (Beta({_num(t['mixup'])}, {_num(t['mixup'])}))" if t["mixup"] else ""]
    return ", ".join(p for p in parts if p) or "none"


def _validation(t: dict[str, Any]) -> str:
    if int(t["folds"] or 1) > 1:
        return f"fold {t['fold']} of {t['folds']}-fold cross-validation"
    return f"one split ({_num(t['val_fraction'])} of labelled studies)"


def _pretrained(t: dict[str, Any], spec) -> str:
    if t.get("pretrained_weights"):  # the file's name only: a local path says nothing to a reader and leaks one
        return f"ImageNet, from the file `{Path(str(t['pretrained_weights'])).name}`"
    return f"ImageNet (`{spec.source}`)" if t["pretrained"] else "none (random initialisation)"


def _calibration(t: dict[str, Any]) -> str:
    f = t.get("calibration_fraction")
    if f is None:
        return "none recorded"
    if not f:
        return "none"
    held = " of training and every selection step"
    share = t.get("calibration_share")
    if share is None:  # recorded before the actual share was: the request, which the split only approximates
        return f"about {_num(f)} of labelled studies (requested), held out{held}"
    n = t.get("n_calibration_studies")
    studies = f" ({n} studies)" if n else ""
    return f"{_num(share)} of labelled studies{studies}, held out{held} (requested {_num(f)})"


def recipe_lines(cfg: dict[str, Any]) -> list[str]:
    """The member's training recipe, from its own config.json (what it was trained with, whatever preset it
    started from), one Markdown bullet each; [] when not recorded."""
    from zoo.registry import get_backbone

    t = _training(cfg)
    if not t:
        return []
    metrics = cfg.get("metrics") or {}
    name = t["recipe"]
    preset = RECIPES[name].values if name in RECIPES else {}
    changed = ", ".join(f"{k} {_num(t[k])}" for k, v in preset.items() if k in t and t[k] != v)
    changed = f" (changed from the preset: {changed})" if changed else ""
    smoothing = (f"label smoothing {_num(t['label_smoothing'])} (targets y(1 - e) + e/2)" if t["label_smoothing"]
                 else "no label smoothing")
    accum = f" (x{t['grad_accum']} gradient accumulation)" if int(t["grad_accum"] or 1) > 1 else ""
    precision = precision_name(t.get("mixed_precision") or "fp32")  # an older config.json: Accelerate's "no"
    stop = f", early stopping after {t['patience']} epochs without a better validation AUC" if t["patience"] else ""
    lines = [
        f"Recipe: `{name}`{changed}; the values below are the ones this member was trained with.",
        f"Data: `{t.get('dataset_name', 'unknown')}` ({t.get('n_train_images', '?')} training images, "
        f"{t.get('n_val_studies', '?')} validation studies); validation: {_validation(t)}.",
        f"Calibration split: {_calibration(t)}.",
        f"Loss: weighted BCE (pos_weight {t.get('pos_weight') or '?'}), {smoothing}.",
        f"Optimizer: {_optimizer(t)}.",
        f"Schedule: {_schedule(t)}.",
        f"Weight EMA: {_ema(t)}.",
        f"Epochs: {t['epochs']} ({_kept(t, metrics)}{stop}); batch "
        f"{t['batch_size']}{accum}, seed {t['seed']}, mixed precision {precision}.",
        f"Image size: {t['img_size']} px.",
        f"Augmentation: {_augmentation(t)}.",
        f"Pretrained weights: {_pretrained(t, get_backbone(cfg['backbone']))}.",
    ]
    if boxes := t.get("boxes"):
        lines.append(f"Box supervision: `{boxes['file']}` (sha256 {boxes['sha256'][:12]}), "
                     f"{boxes['annotated_train_positives']} positive training images with boxes; "
                     f"{boxes.get('loss', 'grad-cam')} loss"
                     + (f" (sharpness {_num(boxes['sharpness'])})" if boxes.get("sharpness") is not None else "")
                     + f" x{_num(boxes['weight'])} (warm-up {_num(boxes['warmup'])} epochs)"
                     + (f", applied to {boxes['supervised']} annotated positives in training"
                        if boxes.get("supervised") is not None else "") + ".")
    semi = t.get("semi_supervised")
    if semi:
        lines.append(f"Semi-supervised: {semi['pseudo_labelled_studies']} of {semi['unlabelled_studies']} unlabelled "
                     "training studies pseudo-labelled by a first-round ensemble (confidence >= "
                     f"{semi['min_confidence']}, soft targets) and added to the training split.")
    return lines


def recipe_row(member: str, cfg: dict[str, Any]) -> dict[str, str]:
    """One run-card table row: how ``member`` was trained, from its config.json."""
    t = _training(cfg)
    if not t:
        return {"member": member, **dict.fromkeys(("recipe", "optimizer", "schedule", "ema", "img_size", "epochs",
                                                   "validation", "pretrained", "calibration"), "not recorded")}
    from zoo.registry import get_backbone

    return {"member": member, "recipe": f"`{t['recipe']}`", "optimizer": _optimizer(t), "schedule": _schedule(t),
            "ema": _num(t["ema_decay"]) if t["ema_decay"] else "none", "img_size": f"{t['img_size']} px",
            "epochs": str(t["epochs"]), "validation": _validation(t),
            "pretrained": _pretrained(t, get_backbone(cfg["backbone"])), "calibration": _calibration(t)}


def _dataset_names(cfg: dict[str, Any]) -> list[str]:
    name = (cfg.get("training") or {}).get("dataset_name")
    return [name] if name else []


def _eval_results(cfg: dict[str, Any]) -> list[EvalResult]:
    metrics = cfg.get("metrics") or {}
    dataset = (cfg.get("training") or {}).get("dataset_name") or "unknown"
    out = []
    for key, metric_type, metric_name in (("val_auc", "roc_auc", "Validation AUC (study level)"),
                                           ("val_kappa", "cohen_kappa", "Validation Cohen's kappa")):
        value = metrics.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out.append(
            EvalResult(
                task_type="image-classification", dataset_type=dataset, dataset_name=dataset,
                dataset_split="validation",
                metric_type=metric_type, metric_value=round(float(value), 4), metric_name=metric_name,
            )
        )
    return out


def _card_data(tags: list[str], **kwargs) -> ModelCardData:
    """The metadata every bone-zoo card shares (:data:`CARD_METADATA`), plus its own tags and fields."""
    return ModelCardData(**CARD_METADATA, tags=list(tags), **kwargs)


def member_card(cfg: dict[str, Any], repo_id: str | None = None, subfolder: str | None = None) -> ModelCard:
    """The README.md of one member folder: YAML metadata with a model-index, recipe, data, usage, limitations."""
    from zoo.registry import get_backbone

    name = cfg["backbone"]
    spec = get_backbone(name)
    metrics = cfg.get("metrics") or {}
    results = _eval_results(cfg)
    data = _card_data([*MEMBER_TAGS, name], datasets=_dataset_names(cfg) or None,
                      model_name=f"bone-zoo-{name}", eval_results=results or None)
    where = repo_id or "ORG/NAME"
    load = (
        f'model = BoneClassifier.from_pretrained("{where}")' if not subfolder else
        f'path = snapshot_download("{where}", allow_patterns="{subfolder}/*")\n'
        f'model = BoneClassifier.from_pretrained(f"{{path}}/{subfolder}")'
    )
    return ModelCard.from_template(data, template_str=_template("member_card.md"), name=name, spec=spec, cfg=cfg,
                                   recipe=recipe_lines(cfg), load=load, where=where, limitations=LIMITATIONS,
                                   metrics={k: v for k, v in metrics.items() if not isinstance(v, dict)},
                                   localisation=localisation_line(metrics.get("val_localisation")))


def localisation_line(record: dict | None) -> str:
    """The card's sentence on where the member's Grad-CAM points on its validation images with boxes
    (``metrics.val_localisation``, :func:`zoo.localisation.validation_localisation`); empty without."""
    if not record:
        return ""
    from zoo.stats import describe_localisation

    pointing, energy = describe_localisation(record)
    return (f"Localisation on the abnormal validation images with boxes (`{record.get('file', '?')}`, "
            f"{record['method']}, scored only): pointing game (maximum within {_num(record['tolerance'])} px of a "
            f"box, {record['level']:.0%} Wilson interval) {pointing}; share of CAM energy inside the boxes "
            f"(bootstrap interval) {energy}.")


def run_card(repo_id: str, leaderboard_md: str, members: list[str], dataset: str | None = None,
             configs: list[dict[str, Any]] | None = None) -> ModelCard:
    """README.md at the root of a run repo: the ensemble as one name, with its leaderboard and, from each member's
    config.json (``configs``, in the order of ``members``), how each member was trained."""
    data = _card_data([*BASE_TAGS, "ensemble"], datasets=[dataset] if dataset else None,
                      model_name=repo_id.split("/")[-1])
    recipes = [recipe_row(m, c) for m, c in zip(members, configs)] if configs else []
    return ModelCard.from_template(data, template_str=_template("run_card.md"), repo_id=repo_id, members=members,
                                   recipes=recipes, leaderboard=leaderboard_md, limitations=LIMITATIONS)
