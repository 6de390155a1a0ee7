"""Learning from unlabelled studies by pseudo-labelling (``train_all.py --semi-supervised``).

Round 1 trains the members on the labelled studies. Their ensemble (calibrated, as predict.py scores) then predicts
the unlabelled training studies; those it is confident about (``max(p, 1 - p) >= min_confidence``) get their
calibrated probability as a *soft* target, and round 2 trains every member again with them added to its training
split (never to validation, which keeps real labels only). The ensemble calibration behind those probabilities is
fitted on the validation studies, never on the calibration split (``--calibration-fraction``), which stays out of
training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def pseudo_labels(ens, unlabelled: pd.DataFrame, min_confidence: float = 0.9, cache_dir: str | None = None,
                  quiet: bool = True, max_gb: float | None = None) -> tuple[pd.DataFrame, dict]:
    """Image rows of the confidently predicted unlabelled studies with ``label`` = the ensemble's calibrated
    probability, and a record of what was used (for config.json and the card). ``max_gb`` bounds the decoded-image
    cache (``--cache-max-gb``)."""
    if unlabelled.empty:
        return unlabelled.iloc[0:0], {"unlabelled_studies": 0, "pseudo_labelled_studies": 0,
                                      "min_confidence": min_confidence}
    # decoded at each member size, within the run's cache bound
    st = ens.predict_studies(unlabelled, cache_dir=cache_dir, quiet=quiet, max_gb=max_gb)
    # calibrated on validation only: the held-out calibration split must not pick training targets
    p = ens.calibrate(st, use_calibration_split=False).studies.set_index("id")["ensemble"]
    keep = p[np.maximum(p, 1 - p) >= min_confidence].dropna()
    rows = unlabelled[unlabelled["id"].isin(keep.index)].copy()
    rows["label"] = rows["id"].map(keep).astype(float)
    record = {"unlabelled_studies": int(st["id"].nunique()), "pseudo_labelled_studies": int(len(keep)),
              "pseudo_abnormal_share": round(float((keep >= 0.5).mean()), 4) if len(keep) else None,
              "min_confidence": min_confidence, "targets": "soft (calibrated ensemble probability)"}
    return rows.reset_index(drop=True), record
