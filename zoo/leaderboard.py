"""A run folder's leaderboard: one row per finished member, as csv, markdown and a validation ROC plot."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from zoo.atomic import write_csv, write_text
from zoo.members import finished_members
from zoo.metrics import plot_roc

COLUMNS = ["backbone", "val_auc", "val_kappa", "val_accuracy", "val_sensitivity", "val_specificity", "val_ece",
           "threshold", "best_epoch", "params", "train_time_s", "val_auc_lo", "val_auc_hi"]


def collect(run_dir: str | Path) -> pd.DataFrame:
    rows = [json.loads((d / "metrics.json").read_text()) | {"backbone": d.name} | _auc_interval(d)
            for d in finished_members(run_dir)]
    df = pd.DataFrame(rows, columns=COLUMNS)
    if df.empty:
        return df
    return df.sort_values("val_auc", ascending=False, na_position="last").reset_index(drop=True)


def _auc_interval(member_dir: Path) -> dict[str, float]:
    """DeLong 95% interval of the member's validation AUC from its val_predictions.csv (NaN without one)."""
    from zoo.stats import auc_ci

    vp = member_dir / "val_predictions.csv"
    if not vp.is_file():
        return {"val_auc_lo": float("nan"), "val_auc_hi": float("nan")}
    v = pd.read_csv(vp)
    ci = auc_ci(v["label"].to_numpy(), v["prob"].to_numpy())
    return {"val_auc_lo": ci["lo"], "val_auc_hi": ci["hi"]}


def to_markdown(df: pd.DataFrame) -> str:
    """The table people read: the validation AUC with its DeLong 95% interval beside it."""
    from zoo.evaluation import interval

    show = df.copy()
    if "val_auc_lo" in show:
        at = show.columns.get_loc("val_auc") + 1
        ci = [interval(lo, hi) for lo, hi in zip(show.pop("val_auc_lo"), show.pop("val_auc_hi"), strict=True)]
        show.insert(at, "val_auc 95% CI", ci)
    show["params"] = (show["params"] / 1e6).map("{:.1f}M".format)
    show["train_time_s"] = show["train_time_s"].map("{:.0f}".format)
    return show.rename(columns={"train_time_s": "train s"}).to_markdown(index=False, floatfmt=".3f")


def write(run_dir: str | Path) -> pd.DataFrame:
    """Write leaderboard.csv, leaderboard.md and roc.png (validation ROC of every member) into ``run_dir``."""
    run_dir = Path(run_dir)
    df = collect(run_dir)
    if df.empty:
        return df
    write_csv(df, run_dir / "leaderboard.csv")
    oof, cv_table = out_of_fold(run_dir)
    write_text(run_dir / "leaderboard.md", to_markdown(df) + "\n" + cv_table)
    curves = {}
    for name in df["backbone"]:
        vp = run_dir / name / "val_predictions.csv"
        if vp.is_file():
            v = pd.read_csv(vp)
            curves[name] = (v["label"].to_numpy(), v["prob"].to_numpy())
    if oof is not None:
        for g in oof.columns[2:]:
            curves[f"{g} (out-of-fold)"] = (oof["label"].to_numpy(), oof[g].to_numpy())
    plot_roc(curves, run_dir / "roc.png", title="Validation ROC (study level)")
    return df


def out_of_fold(run_dir: str | Path) -> tuple[pd.DataFrame | None, str]:
    """For a ``--folds`` run: ``id, label`` and one column per backbone with its out-of-fold validation predictions
    (every labelled study once; each fold member's calibration applied, so the folds share one scale), written to
    ``oof_predictions.csv``, and a markdown table of their AUCs; (None, "") when no member was trained with folds."""
    from zoo.ensemble import Ensemble
    from zoo.members import Member

    run_dir = Path(run_dir)
    members = [Member(d.name, d) for d in finished_members(run_dir)]
    if not any(m.group != m.name for m in members):
        return None, ""
    kept = [(g, f) for g in Ensemble(members).groups if len(g.members) > 1
            if (f := g.val_predictions(calibrated=True)) is not None]  # a fold member without them: left out
    if not kept:
        return None, ""
    df = None
    for g, f in kept:
        f = f.rename(columns={"prob": g.name})
        df = f if df is None else df.merge(f.drop(columns="label"), on="id", how="outer")
    write_csv(df, run_dir / "oof_predictions.csv")
    rows = [{"backbone": g.name, "folds": len(g.members), "out-of-fold AUC": g.val_auc,
             "studies": int(df[g.name].notna().sum())} for g, _ in kept]
    table = pd.DataFrame(rows).sort_values("out-of-fold AUC", ascending=False).to_markdown(index=False, floatfmt=".3f")
    return df, "\n## Cross-validated (out-of-fold predictions, every labelled study once)\n\n" + table + "\n"
