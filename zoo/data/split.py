"""Validation split by study (never by image), stratified by label and body part, seeded."""

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
