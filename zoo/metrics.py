"""Study-level aggregation and metrics: one implementation for training validation, predict.py and reports.

Discrimination (AUC, kappa, sensitivity, specificity) and calibration (ECE with its consistency check, Brier):
:mod:`zoo.calibration` fits calibrations and triages on top of these, never the other way round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

AGGREGATES = ("mean", "max")


def aggregate_studies(images: pd.DataFrame, columns: list[str] | str, how: str = "mean") -> pd.DataFrame:
    """Image rows (``id, part, label`` + probability ``columns``) -> one row per study, sorted by id.

    A study's probability is the mean (default) or max of its images' probabilities.
    """
    if how not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, not {how!r}")
    columns = [columns] if isinstance(columns, str) else list(columns)
    meta = {c: "first" for c in ("part", "label") if c in images.columns}
    agg = images.groupby("id", sort=True).agg({**meta, **{c: how for c in columns}})
    return agg.reset_index()


def best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Youden's J optimum on a ROC curve (rows with a NaN label or score ignored); 0.5 when only one class is
    present. The curve is scikit-learn's ``roc_curve`` (its thresholds: the distinct scores, highest first, after
    ``+inf``; collinear points dropped), computed here because importing scikit-learn costs ~1 s of every
    prediction's start-up; the two agree exactly (tests/test_calibration.py)."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    keep = ~np.isnan(y) & ~np.isnan(p)
    y, p = y[keep], p[keep]
    if len(np.unique(y)) < 2:
        return 0.5
    order = np.argsort(p, kind="mergesort")[::-1]
    p, y = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]  # the last row of each distinct score
    tps = np.cumsum(y)[last]
    fps = 1 + last - tps
    kept = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]) if len(last) > 2 \
        else np.arange(len(last))  # (scikit-learn drops collinear points only where there are more than two)
    tpr = np.r_[0, tps[kept]] / tps[-1]
    fpr = np.r_[0, fps[kept]] / fps[-1]
    thr = np.r_[np.inf, p[last][kept]]
    i = int(np.argmax(tpr - fpr))
    return float(min(max(thr[i], 0.0), 1.0))


def is_abnormal(score, threshold: float) -> np.ndarray:
    """The one decision rule of every verdict (predict.py --binary, report.md, the demo's headline): abnormal where
    the score reaches the threshold, ``score >= threshold`` (a NaN score is not abnormal)."""
    return np.asarray(score, dtype=float) >= threshold


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUC, Cohen's kappa, accuracy, sensitivity, specificity (NaN where undefined) and counts."""
    from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, roc_auc_score

    y = np.asarray(y, float)
    p = np.asarray(p, float)
    keep = ~np.isnan(y) & ~np.isnan(p)
    y, p = y[keep].astype(int), p[keep]
    nan = float("nan")
    if len(y) == 0:
        return {"auc": nan, "kappa": nan, "accuracy": nan, "sensitivity": nan, "specificity": nan, "n": 0, "n_pos": 0}
    pred = is_abnormal(p, threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    two = len(np.unique(y)) == 2
    return {
        "auc": float(roc_auc_score(y, p)) if two else nan,
        "kappa": float(cohen_kappa_score(y, pred)) if two or len(np.unique(pred)) == 2 else nan,
        "accuracy": float(accuracy_score(y, pred)),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else nan,
        "specificity": float(tn / (tn + fp)) if tn + fp else nan,
        "n": int(len(y)),
        "n_pos": int(y.sum()),
    }


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error with ``bins`` equal-width bins (NaN rows ignored)."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    keep = ~np.isnan(y) & ~np.isnan(p)
    y, p = y[keep], p[keep]
    if len(y) == 0:
        return float("nan")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(y[m].mean() - p[m].mean())
    return float(total / len(y))


def ece_check(y: np.ndarray, p: np.ndarray, bins: int = 10, n_sim: int = 2000, seed: int = 0) -> dict[str, float]:
    """The ECE of ``p`` on labels ``y`` against its sampling distribution under perfect calibration.

    Labels are redrawn ``n_sim`` times as Bernoulli(p) on the same studies (consistency resampling, Bröcker & Smith
    2007): ``expected`` is the mean ECE a perfectly calibrated model would show here, ``low``/``high`` its 5th/95th
    percentiles, and ``p_value`` the share of draws at least as far off as the observed ECE (small: miscalibrated).
    On a few hundred studies even a perfect model shows an ECE of several points."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    keep = ~np.isnan(y) & ~np.isnan(p)
    y, p = y[keep], p[keep]
    observed = ece(y, p, bins)
    if len(y) == 0:
        return {"ece": observed, "expected": float("nan"), "low": float("nan"), "high": float("nan"),
                "p_value": float("nan"), "n": 0}
    onehot = np.eye(bins)[np.minimum((p * bins).astype(int), bins - 1)]  # study -> its bin, as in ece()
    draws = (np.random.default_rng(seed).random((n_sim, len(p))) < p).astype(float)
    sims = np.abs(draws @ onehot - p @ onehot).sum(axis=1) / len(p)  # sum over bins of |sum(y) - sum(p)| / n
    return {"ece": observed, "expected": float(sims.mean()), "low": float(np.percentile(sims, 5)),
            "high": float(np.percentile(sims, 95)), "p_value": float((1 + (sims >= observed).sum()) / (1 + n_sim)),
            "n": int(len(y))}


def brier(y: np.ndarray, p: np.ndarray) -> float:
    y, p = np.asarray(y, float), np.asarray(p, float)
    keep = ~np.isnan(y) & ~np.isnan(p)
    return float(np.mean((p[keep] - y[keep]) ** 2)) if keep.any() else float("nan")


def metrics_table(
    studies: pd.DataFrame, columns: list[str], thresholds: Mapping[str, float] | None = None, by_part: bool = True
) -> pd.DataFrame:
    """One row per (model column, body part or "ALL") with :func:`binary_metrics`, ECE, the ECE a perfectly
    calibrated model would show on the same studies and the p-value of the difference
    (:func:`ece_check`), the Brier score, and 95% intervals (:func:`zoo.stats.intervals`:
    ``auc_lo, auc_hi`` DeLong; ``kappa_, sensitivity_, specificity_, ece_`` ``lo/hi`` a bootstrap over studies)."""
    from zoo.stats import intervals

    thresholds = thresholds or {}
    rows = []
    groups = [("ALL", studies)]
    if by_part and "part" in studies.columns:
        groups += list(studies.groupby("part", sort=True))
    for col in columns:
        for part, df in groups:
            m = binary_metrics(df["label"].to_numpy(), df[col].to_numpy(), thresholds.get(col, 0.5))
            y, p = df["label"].to_numpy(), df[col].to_numpy()
            check = ece_check(y, p)
            rows.append({"model": col, "part": part, "threshold": thresholds.get(col, 0.5), **m, "ece": check["ece"],
                         "ece_if_calibrated": check["expected"], "ece_p": check["p_value"], "brier": brier(y, p),
                         **intervals(y, p, thresholds.get(col, 0.5))})
    return pd.DataFrame(rows)


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "ROC") -> Path:
    """One ROC curve per entry (``name -> (labels, probabilities)``), AUC in the legend; saved as PNG."""
    from matplotlib.figure import Figure  # the Figure API: no global backend switch for whoever imports us
    from sklearn.metrics import roc_auc_score, roc_curve

    from zoo.atomic import save_figure

    fig = Figure(figsize=(5.5, 5), dpi=120)
    ax = fig.subplots()
    for name, (y, p) in curves.items():
        y, p = np.asarray(y, float), np.asarray(p, float)
        keep = ~np.isnan(y) & ~np.isnan(p)
        if len(np.unique(y[keep])) < 2:
            continue
        fpr, tpr, _ = roc_curve(y[keep], p[keep])
        auc = roc_auc_score(y[keep], p[keep])
        bold = name.lower().startswith("ensemble")
        ax.plot(fpr, tpr, lw=2.5 if bold else 1.2, color="black" if bold else None, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def fmt(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"
