"""Model cards tell the truth (issue 18.6): member and run cards are rendered from the member's own config.json,
so a ``modern`` member is not published with the seed recipe's description."""

from __future__ import annotations

import re
from dataclasses import asdict

import pytest
from huggingface_hub import ModelCard

from zoo.card import run_card
from zoo.config import RUNTIME_FIELDS, TrainConfig
from zoo.model import BoneClassifier
from zoo.recipes import RECIPES


def _trained_config(recipe: str, **flags) -> dict:
    """config.json's ``training`` as zoo.train.Trainer.export records it, for a member of ``recipe`` (+ flags)."""
    cfg = TrainConfig(backbone="resnet10t", **{**RECIPES[recipe].values, "recipe": recipe, **flags})
    return {**{k: v for k, v in asdict(cfg).items() if k not in RUNTIME_FIELDS}, "dataset_name": "synthetic",
            "n_train_images": 120, "n_val_studies": 30, "pos_weight": 1.5, "mixed_precision": "no"}


def _member_card(tmp_path, recipe: str, **flags) -> str:
    training = _trained_config(recipe, **flags)
    model = BoneClassifier("resnet10t", img_size=training["img_size"], head_hidden=[8], training=training,
                           metrics={"val_auc": 0.9, "best_epoch": 2})
    folder = model.save_member(tmp_path / recipe)  # the README.md a member folder (and the Hub) gets
    return ModelCard.load(folder / "README.md").text


def _names(text: str, word: str) -> bool:
    return re.search(rf"\b{word}\b", text) is not None


def test_a_modern_member_card_names_its_recipe(tmp_path):
    text = _member_card(tmp_path, "modern")
    assert _names(text, "AdamW") and "cosine" in text and "warm-up" in text
    assert not _names(text, "Adam") and "StepLR" not in text  # not the seed's description
    assert "`modern`" in text and "decay 0.998" in text  # EMA
    assert "random resized crop" in text and "brightness ±0.2" in text and "gamma ±0.2" in text
    assert "label smoothing 0.1" in text and "Image size: 256 px" in text and "Epochs: 30" in text
    assert "Pretrained weights: none" in text


def test_a_seed_member_card_names_its_recipe(tmp_path):
    text = _member_card(tmp_path, "seed")
    assert _names(text, "Adam") and "StepLR" in text
    assert not _names(text, "AdamW") and "cosine" not in text and "Weight EMA: none" in text
    assert "random resized crop" not in text and "no label smoothing" in text
    assert "rotation ±30°" in text and "Image size: 512 px" in text and "Epochs: 20" in text


def test_flags_over_a_recipe_are_what_the_card_says(tmp_path):
    text = _member_card(tmp_path, "modern", optimizer="adam", folds=5, fold=2, pretrained=True,
                        pretrained_weights="/home/someone/weights/resnet10t.safetensors")
    assert _names(text, "Adam") and not _names(text, "AdamW")  # --optimizer adam over the modern recipe
    assert "`modern` (changed from the preset: optimizer adam)" in text
    assert "fold 2 of 5-fold" in text
    assert "`resnet10t.safetensors`" in text and "/home/someone" not in text  # the file's name, not a local path


@pytest.mark.parametrize("fraction, says", [
    (None, "Calibration split: none recorded"),
    ({"calibration_fraction": 0.2}, "Calibration split: about 0.2 of labelled studies (requested), held out"),
    ({"calibration_fraction": 0.3, "calibration_share": 0.3333, "n_calibration_studies": 100},
     "Calibration split: 0.3333 of labelled studies (100 studies), held out of training and every selection step "
     "(requested 0.3)")])
def test_the_calibration_split_is_rendered_when_recorded(tmp_path, fraction, says):
    flags = fraction or {}  # the share actually held out where recorded; the request alone is not stated as exact
    training = {**_trained_config("modern"), **flags}
    model = BoneClassifier("resnet10t", img_size=32, head_hidden=[8], training=training)
    assert says in model.generate_model_card().text


def test_a_member_saved_without_training_says_so(tmp_path):
    text = ModelCard.load(BoneClassifier("resnet10t", img_size=32, head_hidden=[8]).save_member(tmp_path / "m")
                          / "README.md").text
    assert "Not recorded" in text and "StepLR" not in text and not _names(text, "Adam")


def test_the_run_card_describes_each_member_from_its_config():
    configs = [{"backbone": "resnet10t", "training": _trained_config(r)} for r in ("seed", "modern")]
    text = run_card("org/run", "|x|", ["a", "b"], "synthetic", configs=configs).text
    seed_row, modern_row = (next(line for line in text.splitlines() if line.startswith(f"| `{m}`")) for m in "ab")
    assert _names(seed_row, "Adam") and "StepLR" in seed_row and "cosine" not in seed_row
    assert _names(modern_row, "AdamW") and "cosine" in modern_row and "0.998" in modern_row
    assert "256 px" in modern_row and "512 px" in seed_row


def test_card_metadata_is_defined_once_for_the_mixin_and_the_cards(tmp_path):
    """The PyTorchModelHubMixin class keywords and the rendered cards take the same metadata (zoo.card), and the
    mixin's own tag does not leak into the shared tags."""
    from zoo.card import CARD_METADATA, MEMBER_TAGS

    mixin = BoneClassifier._hub_mixin_info.model_card_data.to_dict()
    meta = ModelCard.load(BoneClassifier("resnet10t", img_size=32, head_hidden=[8]).save_member(tmp_path / "m")
                          / "README.md").data.to_dict()
    for key, value in CARD_METADATA.items():
        assert mixin[key] == meta[key] == value, key
    assert set(MEMBER_TAGS) <= set(mixin["tags"]) and set(meta["tags"]) == {*MEMBER_TAGS, "resnet10t"}
    run = run_card("org/run", "|x|", ["a"]).data.to_dict()
    assert {k: run[k] for k in CARD_METADATA} == CARD_METADATA and "model_hub_mixin" not in run["tags"]
