"""A run folder's leaderboard: one row per finished member, as csv, markdown and a validation ROC plot."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from zoo.members import finished_members
from zoo.metrics import plot_roc

COLUMNS = ["backbone", "val_auc", "val_kappa", "val_accuracy", "val_sensitivity", "val_specificity", "val_ece",
           "threshold", "best_epoch", "params", "train_time_s"]


def collect(run_dir: str | Path) -> pd.DataFrame:
    rows = [json.loads((d / "metrics.json").read_text()) | {"backbone": d.name} for d in finished_members(run_dir)]
    df = pd.DataFrame(rows, columns=COLUMNS)
    if df.empty:
        return df
    return df.sort_values("val_auc", ascending=False, na_position="last").reset_index(drop=True)


def to_markdown(df: pd.DataFrame) -> str:
    show = df.copy()
    show["params"] = (show["params"] / 1e6).map("{:.1f}M".format)
    show["train_time_s"] = show["train_time_s"].map("{:.0f}".format)
    return show.rename(columns={"train_time_s": "train s"}).to_markdown(index=False, floatfmt=".3f")


def write(run_dir: str | Path) -> pd.DataFrame:
    """Write leaderboard.csv, leaderboard.md and roc.png (validation ROC of every member) into ``run_dir``."""
    run_dir = Path(run_dir)
    df = collect(run_dir)
    if df.empty:
        return df
    df.to_csv(run_dir / "leaderboard.csv", index=False)
    (run_dir / "leaderboard.md").write_text(to_markdown(df) + "\n")
    curves = {}
    for name in df["backbone"]:
        vp = run_dir / name / "val_predictions.csv"
        if vp.is_file():
            v = pd.read_csv(vp)
            curves[name] = (v["label"].to_numpy(), v["prob"].to_numpy())
    plot_roc(curves, run_dir / "roc.png", title="Validation ROC (study level)")
    return df
