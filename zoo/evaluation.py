"""The research-grade parts of an evaluation report: intervals beside every number, the paired DeLong test of the
ensemble against each member in words, and AUC per subgroup (``--strata``) with the subgroups that differ flagged.

``zoo.cli.predict.write_report`` calls these; the statistics themselves live in :mod:`zoo.stats`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.stats import LEVEL, auc_ci, delong_test, describe_difference, interval

INTERVAL_METRICS = ("auc", "kappa", "sensitivity", "specificity", "ece")
MAX_LEVELS = 12  # a numeric strata column with more distinct values is cut into quartiles


def interval_columns(table: pd.DataFrame, show: pd.DataFrame) -> pd.DataFrame:
    """``show`` (the formatted metrics table) with each ``<metric>_lo, <metric>_hi`` pair of ``table`` turned into
    one ``<metric> 95% CI`` text column, appended at the end (the existing columns keep their place)."""
    show = show.drop(columns=[c for c in show.columns if c.endswith(("_lo", "_hi"))])
    for m in INTERVAL_METRICS:
        if f"{m}_lo" in table:
            show[f"{m} {LEVEL:.0%} CI"] = [interval(lo, hi) for lo, hi in zip(table[f"{m}_lo"], table[f"{m}_hi"],
                                                                            strict=True)]
    return show


def paired_lines(labelled: pd.DataFrame, members: list[str], reference: str = "ensemble") -> list[str]:
    """The report section: a paired DeLong test of ``reference`` against each of ``members`` on the same studies,
    as a table and one sentence each."""
    y = labelled["label"].to_numpy()
    rows, words = [], []
    for name in members:
        t = delong_test(y, labelled[reference].to_numpy(), labelled[name].to_numpy())
        rows.append({"comparison": f"{reference} - {name}", "AUC difference": f"{t['diff']:.3f}",
                     f"{LEVEL:.0%} CI": interval(t["lo"], t["hi"]), "p": f"{t['p']:.3g}"})
        words.append(f"- {describe_difference(f'the {reference}', name, t)}.")
    if not rows:
        return []
    return ["## Paired comparisons (DeLong)", "",
            f"Each member against the {reference} on the same {len(labelled)} studies: the paired DeLong test of two "
            "correlated AUCs (DeLong et al. 1988; fast algorithm of Sun & Xu 2014), Wald interval of the difference, "
            "two-sided p. AUC intervals elsewhere in this report are DeLong on the logit scale; kappa, sensitivity, "
            "specificity and ECE intervals are percentile intervals of 2000 bootstrap resamples of the studies "
            "(abnormal and normal resampled separately).", "",
            pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True), "", *words, ""]


def read_strata(path: str | Path) -> pd.DataFrame:
    """A strata CSV: an ``id`` column (study id) and any columns to stratify by; one clear error otherwise."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"id": str})
    except (OSError, ValueError) as exc:
        raise ValueError(f"--strata {path}: cannot read it as CSV ({exc})") from exc
    if "id" not in df.columns:
        raise ValueError(f"--strata {path}: no 'id' column (columns: {', '.join(df.columns)}); the file needs the "
                         "study id plus the columns to stratify by")
    if df["id"].duplicated().any():
        raise ValueError(f"--strata {path}: study id {df.loc[df['id'].duplicated(), 'id'].iloc[0]!r} appears twice")
    return df


def _levels(col: pd.Series) -> pd.Series:
    """The subgroup of each study for one column: its value, or its quartile for a many-valued numeric column."""
    if pd.api.types.is_numeric_dtype(col) and col.nunique() > MAX_LEVELS:
        return pd.qcut(col, 4, duplicates="drop").astype(str)
    return col


def strata_table(labelled: pd.DataFrame, models: list[str], strata: pd.DataFrame | None = None) -> pd.DataFrame:
    """AUC with its DeLong interval per (column, value, model): body part always, plus each column of ``strata``
    (matched on study ``id``). ``outside`` marks a subgroup whose interval excludes the model's overall AUC."""
    df = labelled.copy()
    columns = ["part"] if "part" in df else []
    if strata is not None:
        extra = [c for c in strata.columns if c != "id" and c not in df.columns]
        df = df.merge(strata[["id", *extra]], on="id", how="left")
        columns += extra
    y = df["label"].to_numpy()
    overall = {m: auc_ci(y, df[m].to_numpy())["auc"] for m in models}
    rows = []
    for column in columns:
        levels = _levels(df[column])
        for value in sorted(levels.dropna().unique(), key=str):
            sub = df[levels == value]
            for m in models:
                ci = auc_ci(sub["label"].to_numpy(), sub[m].to_numpy())
                outside = not math.isnan(ci["lo"]) and not ci["lo"] <= overall[m] <= ci["hi"]
                rows.append({"column": column, "value": str(value), "model": m, "n": len(sub),
                             "n_pos": int(sub["label"].sum()), "auc": ci["auc"], "auc_lo": ci["lo"],
                             "auc_hi": ci["hi"], "overall_auc": overall[m], "outside": outside})
    return pd.DataFrame(rows)


def strata_lines(table: pd.DataFrame) -> list[str]:
    """The report section for :func:`strata_table`."""
    if table.empty:
        return []
    show = table.assign(auc=table["auc"].map(lambda v: "" if math.isnan(v) else f"{v:.3f}"),
                        overall_auc=table["overall_auc"].map("{:.3f}".format),
                        outside=np.where(table["outside"], "**yes**", ""))
    show.insert(show.columns.get_loc("auc") + 1, f"{LEVEL:.0%} CI",
                [interval(lo, hi) for lo, hi in zip(table["auc_lo"], table["auc_hi"], strict=True)])
    show = show.drop(columns=["auc_lo", "auc_hi"])
    flagged = table[table["outside"]]
    words = [f"- **{r.model}** on {r.column} = {r.value} ({r.n} studies): AUC {r.auc:.3f} "
             f"({interval(r.auc_lo, r.auc_hi)}) excludes its overall {r.overall_auc:.3f}."
             for r in flagged.itertuples()]
    return ["## Subgroups", "",
            f"AUC per subgroup with its DeLong {LEVEL:.0%} interval; `outside` marks a subgroup whose interval "
            "excludes the model's overall AUC (a subgroup it does measurably better or worse on: a shortcut or a "
            "harder case mix). Subgroups without both classes have no AUC. Many subgroups are tested, so expect "
            f"about {1 - LEVEL:.0%} of them flagged by chance alone.", "",
            show.to_markdown(index=False, disable_numparse=True), "",
            *(words or ["No subgroup's interval excludes the overall AUC."]), ""]


def research_sections(labelled: pd.DataFrame, members: list[str], out_dir: str | Path,
                      strata: pd.DataFrame | None = None, reference: str = "ensemble") -> list[str]:
    """The paired tests and the subgroup table for report.md (the latter also as ``strata.csv`` in ``out_dir``)."""
    from zoo.atomic import write_csv

    lines = paired_lines(labelled, members, reference)
    table = strata_table(labelled, [*members, reference], strata)
    if strata is not None or not table.empty:
        write_csv(table, Path(out_dir) / "strata.csv")
    return lines + strata_lines(table)


def add_evaluation_args(p) -> None:
    """The flags ``predict.py --evaluate`` and ``bone-zoo evaluate`` share (subgroups, localisation, ROAD)."""
    from zoo.localisation import TOLERANCE  # no torch here: the ONNX path builds this parser too

    a = p.add_argument
    a("--strata", default=None, metavar="CSV", help="with --evaluate: a CSV with a study 'id' column and any columns "
      "to stratify by (e.g. FracAtlas' metadata.csv); report.md gets the AUC with its 95%% interval per value of each "
      "column (and per body part, always), flagging subgroups whose interval excludes the overall AUC")
    a("--annotations", default=None, metavar="COCO_JSON", help="with --evaluate: COCO boxes of the findings, matched "
      "to test images by file name; report.md gets the pointing game, energy share and ROAD per member, CAM method "
      "and the fused CAM, beside chance (needs pycocotools: pip install 'bone-zoo[eval]')")
    a("--loc-methods", nargs="+", default=None, metavar="METHOD", help="CAM methods scored against --annotations "
      "(default: every method of zoo.cam: gradcam, gradcam++, eigencam, layercam, xgradcam)")
    a("--road-samples", type=int, default=8, metavar="N", help="ROAD faithfulness on the first N annotated images "
      "per member and method (0 = off; each costs 6 imputations and forwards; default %(default)s)")
    a("--pointing-tolerance", type=float, default=TOLERANCE, help="pointing-game tolerance in stored-image pixels "
      "(default %(default)s, Zhang et al. 2018)")


def load_evaluation_inputs(args) -> tuple[pd.DataFrame | None, object | None]:
    """``(strata table, COCO)`` from ``--strata`` / ``--annotations`` (None where not given), read before anything
    is written so a bad file stops the run with one clear line (ValueError / OSError / ImportError)."""
    from zoo.localisation import load_annotations

    given = [f for f in ("strata", "annotations") if getattr(args, f, None)]
    if given and not args.evaluate:
        raise ValueError(f"--{given[0]} scores the labelled test split: add --evaluate")
    strata = read_strata(args.strata) if getattr(args, "strata", None) else None
    coco = load_annotations(args.annotations) if getattr(args, "annotations", None) else None
    return strata, coco


def localisation_report(ens, images: pd.DataFrame, coco, root, out_dir: str | Path, args) -> list[str]:
    """:func:`zoo.localisation.localisation_report` with the options of :func:`add_evaluation_args` (and the run's
    decoded-image cache, ``--cache-dir`` / ``--cache-max-gb``)."""
    from zoo.localisation import LocalisationOptions
    from zoo.localisation import localisation_report as run

    options = LocalisationOptions(tuple(args.loc_methods) if args.loc_methods else None, args.road_samples,
                                  args.pointing_tolerance, getattr(args, "cache_dir", None),
                                  getattr(args, "cache_max_gb", None), getattr(args, "quiet", False))
    return run(ens, images, coco, root, out_dir, options)
