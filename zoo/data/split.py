"""Validation splits by patient, then study (never by image), seeded: one held-out share, or k folds that validate
every labelled study exactly once.

A patient's studies always land on one side (the ``patient`` column of the image table: MURA's ``patientNNNNN``, the
competition csv's optional column). Where no study shares a patient the groups are the studies themselves and the
splits are exactly the study-level splits of before (scikit-learn's stratified splitters over studies); otherwise
scikit-learn's ``StratifiedGroupKFold`` keeps each patient whole.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from zoo.data.layouts import studies


def _shared_patients(st: pd.DataFrame) -> bool:
    """Whether some patient has more than one of these studies (else grouping by study is the same thing)."""
    return bool(st["patient"].duplicated().any())


def _grouped_folds(st: pd.DataFrame, y: pd.Series, n_splits: int, seed: int) -> list[np.ndarray]:
    """Validation row indices (into ``st``) of ``n_splits`` stratified folds that keep each patient whole."""
    from sklearn.model_selection import StratifiedGroupKFold

    with warnings.catch_warnings():  # "least populated class has fewer members than n_splits": checked by callers
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        splitter = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
        return [val for _, val in splitter.split(st["id"], y.to_numpy(), st["patient"].astype(str).to_numpy())]


def _both_classes(labels: pd.Series) -> bool:
    return labels.nunique() == 2


def split_by_study(
    images: pd.DataFrame, val_fraction: float = 0.2, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the *labelled* images into train/val so that no patient (and so no study) straddles both.

    Stratified by label x body part where every stratum has at least two studies, else by label alone. Where
    patients have several studies, the validation side is the fold of a ``StratifiedGroupKFold`` into
    ``round(1 / val_fraction)`` folds whose size is closest to ``val_fraction`` of the studies (and that leaves both
    classes on both sides), so its share is approximate.
    """
    from sklearn.model_selection import train_test_split  # here: scikit-learn costs ~1 s of start-up to import

    labelled = images[images["label"].notna()]
    st = studies(labelled)
    if len(st) < 4:
        raise ValueError(f"need at least 4 labelled studies to make a validation split, got {len(st)}")
    strata = st["label"].astype(int).astype(str) + "_" + st["part"].astype(str)
    n_val = max(2, round(len(st) * val_fraction))
    if not _shared_patients(st):
        if strata.value_counts().min() < 2 or strata.nunique() > n_val:
            strata = st["label"].astype(int)
            if strata.value_counts().min() < 2:
                strata = None
        _, val_ids = train_test_split(st["id"], test_size=n_val, random_state=seed, stratify=strata)
    else:
        n_patients = st["patient"].nunique()
        if n_patients < 4:
            raise ValueError(f"need at least 4 labelled patients to make a validation split, got {n_patients} "
                             f"(over {len(st)} studies)")
        n_splits = min(n_patients, max(2, round(1 / val_fraction)), int(st["label"].value_counts().max()))
        if strata.value_counts().min() < n_splits:
            strata = st["label"].astype(int)
        folds = _grouped_folds(st, strata, n_splits, seed)
        y = st["label"]
        usable = [f for f in folds if _both_classes(y.iloc[f]) and _both_classes(y.drop(y.index[f]))]
        if not usable:
            raise ValueError(f"val_fraction {val_fraction}: with each patient's studies kept on one side, no "
                             f"validation split of these {len(st)} labelled studies ({int(y.sum())} abnormal, "
                             f"{n_patients} patients) has both classes on both sides. Label more patients of each "
                             "class, or change --val-fraction")
        val = min(usable, key=lambda f: abs(len(f) - n_val))  # the first of the closest: deterministic
        val_ids = st["id"].iloc[val]
    is_val = labelled["id"].isin(set(val_ids))
    return labelled[~is_val].reset_index(drop=True), labelled[is_val].reset_index(drop=True)


def fold_split(images: pd.DataFrame, folds: int, fold: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fold ``fold`` of a ``folds``-fold cross-validation over the *labelled* studies (stratified by label, shuffled
    with ``seed``, each patient's studies in one fold): (training images, validation images). Over
    ``fold = 0 .. folds-1`` every labelled study is validated exactly once, so the members' validation predictions
    are out-of-fold predictions for all of them."""
    from sklearn.model_selection import StratifiedKFold

    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1} of folds >= 2, got fold {fold} of {folds}")
    labelled = images[images["label"].notna()]
    st = studies(labelled)
    y = st["label"].astype(int)
    if len(st) < 2 * folds or y.value_counts().min() < folds:
        raise ValueError(f"--folds {folds} needs at least {folds} labelled studies of each class and {2 * folds} in "
                         f"all; got {len(st)} ({int(y.sum())} abnormal). Use fewer folds")
    if not _shared_patients(st):
        val = [v for _, v in StratifiedKFold(folds, shuffle=True, random_state=seed).split(st["id"], y)]
    else:
        per_class = st.groupby(y)["patient"].nunique()
        if per_class.min() < folds:
            raise ValueError(f"--folds {folds} needs at least {folds} labelled patients with studies of each class; "
                             f"got {per_class.to_dict()} (0 normal, 1 abnormal). Use fewer folds")
        val = _grouped_folds(st, y, folds, seed)
        if not all(_both_classes(y.iloc[v]) for v in val):
            raise ValueError(f"--folds {folds}: with each patient's studies kept in one fold, some fold gets studies "
                             "of one class only. Use fewer folds")
    is_val = labelled["id"].isin(set(st["id"].iloc[val[fold]]))
    return labelled[~is_val].reset_index(drop=True), labelled[is_val].reset_index(drop=True)
