"""A run's leaderboard as data: one row per finished member (``member`` is its folder's name, ``backbone`` the
registered backbone it was trained from: fold members of one backbone share it), and the tables people read.
Plain data in, plain data out: the run folder's files are written by :mod:`zoo.run`."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd

from zoo.members import MemberError, finished_members, read_member_config

COLUMNS = ["member", "backbone", "val_auc", "val_kappa", "val_accuracy", "val_sensitivity", "val_specificity",
           "val_ece", "threshold", "best_epoch", "kept_epoch", "params", "train_time_s", "val_auc_lo", "val_auc_hi"]
CV_HEADING = "\n## Cross-validated (out-of-fold predictions, every labelled study once)\n\n"


def collect(run_dir: str | Path) -> pd.DataFrame:
    """The finished members of ``run_dir``, best validation AUC first (their metrics.json and config.json); a member
    whose metrics.json or config.json cannot be read is left out with a warning naming the file."""
    rows = [row | _auc_interval(d) for d in finished_members(run_dir) if (row := _row(d)) is not None]
    df = pd.DataFrame(rows, columns=COLUMNS)
    if df.empty:
        return df
    return df.sort_values("val_auc", ascending=False, na_position="last").reset_index(drop=True)


def _row(member_dir: Path) -> dict | None:
    f = member_dir / "metrics.json"
    try:
        metrics = json.loads(f.read_text())
        if not isinstance(metrics, dict):
            raise ValueError("not a JSON object")
        metrics.setdefault("kept_epoch", metrics.get("best_epoch"))  # a member from before --keep kept its best
        return metrics | {"member": member_dir.name, "backbone": read_member_config(member_dir)["backbone"]}
    except MemberError as exc:  # names its config.json
        why = str(exc)
    except (OSError, ValueError) as exc:
        why = f"{f}: not readable ({exc})"
    warnings.warn(f"{why}; member {member_dir.name} left out of the leaderboard", stacklevel=3)
    return None


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
    from zoo.stats import interval

    show = df.copy()
    if "val_auc_lo" in show:
        at = show.columns.get_loc("val_auc") + 1
        ci = [interval(lo, hi) for lo, hi in zip(show.pop("val_auc_lo"), show.pop("val_auc_hi"), strict=True)]
        show.insert(at, "val_auc 95% CI", ci)
    show["params"] = (show["params"] / 1e6).map("{:.1f}M".format)
    show["train_time_s"] = show["train_time_s"].map("{:.0f}".format)
    return show.rename(columns={"train_time_s": "train s"}).to_markdown(index=False, floatfmt=".3f")


def cross_validated(rows: list[dict]) -> str:
    """The markdown section of a ``--folds`` run: one row per backbone (``backbone``, ``folds``, ``out-of-fold AUC``,
    ``studies``), best first; "" without rows."""
    if not rows:
        return ""
    table = pd.DataFrame(rows).sort_values("out-of-fold AUC", ascending=False).to_markdown(index=False, floatfmt=".3f")
    return CV_HEADING + table + "\n"
