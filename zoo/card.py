"""Hugging Face Hub model cards for zoo members and for a whole run (an ensemble repo)."""

from __future__ import annotations

import math
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

LIMITATIONS = """## Intended use and limitations
- **A research tool, not a medical device.** It has not been validated clinically and must not be used for diagnosis
  or treatment decisions.
- Trained on the data named above only; performance on other hospitals, scanners, body parts or populations is unknown.
- Radiograph classifiers learn shortcuts: metal hardware, casts, side markers and text burnt into the image correlate
  with labels. Check the Grad-CAM maps (`bone-zoo demo`) before trusting a prediction.
- Raw probabilities are not calibrated; `config.json` holds a temperature-and-bias calibration fitted on the validation
  split, which `bone-zoo predict` and the demo apply (`--no-calibrate` gives the raw score). The stored threshold was
  chosen on the validation split (Youden's J), on raw scores.
"""


# Jinja templates rendered by huggingface_hub's ModelCard.from_template (card_data = the YAML of ModelCardData)
MEMBER_TEMPLATE = """---
{{ card_data }}
---

# bone-zoo member: `{{ name }}`

Normal/abnormal classifier for musculoskeletal radiographs (MURA-style), one member of a
[bone-zoo](https://github.com/bone-zoo/bone-zoo) ensemble.

## Model
- Backbone: **{{ name }}** ({{ spec.description }}; source `{{ spec.source }}`), 1-channel input, stem adapted by
  summing RGB kernels.
- Head: MLP {{ cfg.head_hidden }} with BatchNorm, dropout {{ cfg.dropout }}, ReLU; one logit (sigmoid = P(abnormal)).
- Input: grayscale, aspect-preserving resize to {{ cfg.img_size }} px with zero padding, normalised with
  mean {{ cfg.mean }} / std {{ cfg.std }}. Decision threshold: {{ "%.4f"|format(cfg.get("threshold", 0.5)) }}.

## Training recipe
- Data: `{{ train.get("dataset_name", "unknown") }}` ({{ train.get("n_train_images", "?") }} training images,
  {{ train.get("n_val_studies", "?") }} validation studies, split by study).
- Weighted BCE (pos_weight {{ train.get("pos_weight", "?") }}), Adam lr {{ train.get("lr") }}, \
StepLR({{ train.get("step_size") }}, {{ train.get("gamma") }}), {{ train.get("epochs") }} epochs (best epoch \
{{ metrics.get("best_epoch", "?") }} by validation AUC), batch {{ train.get("batch_size") }}, seed \
{{ train.get("seed") }}, pretrained: {{ train.get("pretrained") }}, mixed precision \
{{ train.get("mixed_precision", "no") }}.
- Augmentation: rotation ±{{ train.get("rotation") }}°, horizontal flip {{ train.get("hflip") }}, translation \
{{ train.get("translate") }}.
{% if train.get("semi_supervised") %}- Semi-supervised: {{ train.semi_supervised.pseudo_labelled_studies }} of \
{{ train.semi_supervised.unlabelled_studies }} unlabelled training studies pseudo-labelled by a first-round ensemble \
(confidence >= {{ train.semi_supervised.min_confidence }}, soft targets) and added to the training split.
{% endif %}
## Validation metrics (study level, mean of image probabilities)
| metric | value |
|---|---|
{% for k, v in metrics.items() %}| {{ k }} | {{ "%.4f"|format(v) if v is float else v }} |
{% endfor %}
## How to use
```python
from huggingface_hub import snapshot_download
from zoo import BoneClassifier
{{ load }}
```
Or the whole ensemble, after `pip install bone-zoo`: `bone-zoo predict --models hf://{{ where }} --data DIR \
-output preds.csv`.

{{ limitations }}"""

RUN_TEMPLATE = """---
{{ card_data }}
---

# {{ repo_id }}: a bone-zoo ensemble

{{ members|length }} members, one folder each (`model.safetensors`, `config.json`, `README.md`):
{% for m in members %}- [`{{ m }}`](./{{ m }}/README.md)
{% endfor %}
## Leaderboard (validation split, study level)
{{ leaderboard }}

## How to use
```bash
pip install bone-zoo
bone-zoo predict --models hf://{{ repo_id }} --data DIR -output preds.csv      # the whole ensemble
hf download {{ repo_id }} --local-dir weights/ && bone-zoo predict --models weights/ --data DIR -output preds.csv
bone-zoo demo --hub {{ repo_id }}                                               # Gradio demo with Grad-CAM
bone-zoo space ORG/DEMO --models hf://{{ repo_id }} --push                      # the demo as a Hugging Face Space
```

{{ limitations }}"""


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
                task_type="image-classification", dataset_type=dataset, dataset_name=dataset, dataset_split="validation",
                metric_type=metric_type, metric_value=round(float(value), 4), metric_name=metric_name,
            )
        )
    return out


BASE_TAGS = ["bone-zoo", "radiology", "x-ray", "musculoskeletal"]


def _card_data(extra_tags: list[str], **kwargs) -> ModelCardData:
    """The metadata every bone-zoo card shares, plus its own tags and fields."""
    return ModelCardData(library_name="bone-zoo", license="apache-2.0", pipeline_tag="image-classification",
                         tags=BASE_TAGS + extra_tags, **kwargs)


def member_card(cfg: dict[str, Any], repo_id: str | None = None, subfolder: str | None = None) -> ModelCard:
    """The README.md of one member folder: YAML metadata with a model-index, recipe, data, usage, limitations."""
    from zoo.registry import get_backbone

    name = cfg["backbone"]
    spec = get_backbone(name)
    train = cfg.get("training") or {}
    metrics = cfg.get("metrics") or {}
    results = _eval_results(cfg)
    data = _card_data(["image-classification", name], datasets=_dataset_names(cfg) or None,
                      model_name=f"bone-zoo-{name}", eval_results=results or None)
    where = repo_id or "ORG/NAME"
    load = (
        f'model = BoneClassifier.from_pretrained("{where}")' if not subfolder else
        f'path = snapshot_download("{where}", allow_patterns="{subfolder}/*")\n'
        f'model = BoneClassifier.from_pretrained(f"{{path}}/{subfolder}")'
    )
    return ModelCard.from_template(data, template_str=MEMBER_TEMPLATE, name=name, spec=spec, cfg=cfg, train=train,
                                   metrics=metrics, load=load, where=where, limitations=LIMITATIONS)


def run_card(repo_id: str, leaderboard_md: str, members: list[str], dataset: str | None = None) -> ModelCard:
    """README.md at the root of a run repo: the ensemble as one name, with its leaderboard."""
    data = _card_data(["ensemble"], datasets=[dataset] if dataset else None, model_name=repo_id.split("/")[-1])
    return ModelCard.from_template(data, template_str=RUN_TEMPLATE, repo_id=repo_id, members=members,
                                   leaderboard=leaderboard_md, limitations=LIMITATIONS)
