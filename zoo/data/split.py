"""Validation splits by study (never by image), seeded: one held-out share, or k folds that validate every labelled
study exactly once."""

from __future__ import annotations

import pandas as pd

from zoo.data.layouts import studies


def split_by_study(
    images: pd.DataFrame, val_fraction: float = 0.2, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the *labelled* images into train/val so that no study straddles both.

    Stratified by label x body part where every stratum has at least two studies, else by label alone.
    """
    from sklearn.model_selection import train_test_split  # here: scikit-learn costs ~1 s of start-up to import

    labelled = images[images["label"].notna()]
    st = studies(labelled)
    if len(st) < 4:
        raise ValueError(f"need at least 4 labelled studies to make a validation split, got {len(st)}")
    strata = st["label"].astype(int).astype(str) + "_" + st["part"].astype(str)
    n_val = max(2, round(len(st) * val_fraction))
    if strata.value_counts().min() < 2 or strata.nunique() > n_val:
        strata = st["label"].astype(int)
        if strata.value_counts().min() < 2:
            strata = None
    train_ids, val_ids = train_test_split(st["id"], test_size=n_val, random_state=seed, stratify=strata)
    val_set = set(val_ids)
    is_val = labelled["id"].isin(val_set)
    return labelled[~is_val].reset_index(drop=True), labelled[is_val].reset_index(drop=True)


def fold_split(images: pd.DataFrame, folds: int, fold: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fold ``fold`` of a ``folds``-fold cross-validation over the *labelled* studies (stratified by label, shuffled
    with ``seed``): (training images, validation images). Over ``fold = 0 .. folds-1`` every labelled study is
    validated exactly once, so the members' validation predictions are out-of-fold predictions for all of them."""
    from sklearn.model_selection import StratifiedKFold

    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1} of folds >= 2, got fold {fold} of {folds}")
    labelled = images[images["label"].notna()]
    st = studies(labelled)
    y = st["label"].astype(int)
    if len(st) < 2 * folds or y.value_counts().min() < folds:
        raise ValueError(f"--folds {folds} needs at least {folds} labelled studies of each class and {2 * folds} in "
                         f"all; got {len(st)} ({int(y.sum())} abnormal). Use fewer folds")
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(st["id"], y))
    is_val = labelled["id"].isin(set(st["id"].iloc[splits[fold][1]]))
    return labelled[~is_val].reset_index(drop=True), labelled[is_val].reset_index(drop=True)
