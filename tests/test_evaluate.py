"""Intervals in every table, the paired tests in the report, subgroups (--strata) and `bone-zoo evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY

from zoo.evaluation import interval_columns, paired_lines, read_strata, strata_table
from zoo.metrics import metrics_table


def _studies(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(int)
    good = 1 / (1 + np.exp(-(2.0 * y - 1 + rng.normal(size=n))))
    weak = 1 / (1 + np.exp(-(0.6 * y - 0.3 + rng.normal(size=n))))
    return pd.DataFrame({"id": [f"HAND_{i:06d}" for i in range(n)], "part": rng.choice(["HAND", "WRIST"], n),
                         "label": y.astype(float), "good": good, "weak": weak, "ensemble": (good + weak) / 2})


def test_metrics_table_appends_intervals_that_hold_the_estimates():
    st = _studies()
    table = metrics_table(st, ["good", "ensemble"], {"good": 0.5, "ensemble": 0.5})
    old = ["model", "part", "threshold", "auc", "kappa", "accuracy", "sensitivity", "specificity", "n", "n_pos",
           "ece", "ece_if_calibrated", "ece_p", "brier"]
    assert list(table.columns[: len(old)]) == old  # the existing columns keep their place
    for m in ("auc", "kappa", "sensitivity", "specificity", "ece"):
        assert (table[f"{m}_lo"] <= table[m]).all() and (table[m] <= table[f"{m}_hi"]).all(), m
    show = interval_columns(table, table.copy())
    assert "auc 95% CI" in show and not any(c.endswith("_lo") for c in show)
    assert show["auc 95% CI"].iloc[0] == f"{table['auc_lo'].iloc[0]:.3f}–{table['auc_hi'].iloc[0]:.3f}"


def test_report_says_the_paired_comparison_in_words():
    st = _studies()
    text = "\n".join(paired_lines(st, ["good", "weak"]))
    assert "## Paired comparisons (DeLong)" in text
    assert "the ensemble's AUC is" in text and "lower than good's" in text and "higher than weak's" in text
    assert "significantly" in text  # 400 studies separate a strong from a weak member


def _shortcut_set(n: int = 600, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Studies where a 'hardware' flag (a plate on the film) gives the model the answer: among studies with hardware
    the score is nearly perfect, among those without it is weak. A 'site' column has no effect."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(int)
    hardware = rng.random(n) < 0.3
    site = rng.choice(["A", "B"], n)
    signal = np.where(hardware, 4.0, 0.7) * y + rng.normal(size=n)
    st = pd.DataFrame({"id": [f"S{i:05d}" for i in range(n)], "part": "HAND", "label": y.astype(float),
                       "ensemble": 1 / (1 + np.exp(-signal))})
    return st, pd.DataFrame({"id": st["id"], "hardware": hardware.astype(int), "site": site})


def test_a_planted_shortcut_is_flagged_and_a_neutral_column_is_not():
    st, strata = _shortcut_set()
    table = strata_table(st, ["ensemble"], strata).set_index(["column", "value"])
    assert table.loc[("hardware", "1"), "outside"] and table.loc[("hardware", "0"), "outside"]
    assert table.loc[("hardware", "1"), "auc"] > table.loc[("hardware", "1"), "overall_auc"]
    assert not table.loc[("site", "A"), "outside"] and not table.loc[("site", "B"), "outside"]
    assert ("part", "HAND") in table.index  # body part always
    lo, hi = table.loc[("hardware", "1"), ["auc_lo", "auc_hi"]]
    assert lo < table.loc[("hardware", "1"), "auc"] < hi


def test_strata_file_errors_say_what_and_where(tmp_path):
    f = tmp_path / "meta.csv"
    f.write_text("study,hardware\nA,1\n")
    with pytest.raises(ValueError, match="no 'id' column"):
        read_strata(f)
    f.write_text("id,hardware\nA,1\nA,0\n")
    with pytest.raises(ValueError, match="appears twice"):
        read_strata(f)


def test_leaderboard_carries_the_delong_interval_of_each_validation_auc(tmp_path):
    from zoo import leaderboard

    st = _studies(200)
    for name, col in (("good_net", "good"), ("weak_net", "weak")):
        d = tmp_path / name
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"")
        (d / "config.json").write_text(json.dumps({"backbone": name}))
        (d / "metrics.json").write_text(json.dumps({"val_auc": 0.5, "params": 1e6, "train_time_s": 1.0}))
        pd.DataFrame({"id": st["id"], "label": st["label"], "prob": st[col]}).to_csv(d / "val_predictions.csv")
    board = leaderboard.collect(tmp_path)
    assert list(board.columns[:11]) == leaderboard.COLUMNS[:11]
    from zoo.stats import auc_ci

    row = board.set_index("backbone").loc["good_net"]
    ci = auc_ci(st["label"], st["good"])
    assert row["val_auc_lo"] == pytest.approx(ci["lo"]) and row["val_auc_hi"] == pytest.approx(ci["hi"])
    assert 0.5 < ci["lo"] < ci["hi"] < 1
    md = leaderboard.to_markdown(board)
    assert "val_auc 95% CI" in md and f"{ci['lo']:.3f}–{ci['hi']:.3f}" in md
    assert board["val_auc_lo"].notna().all()


@pytest.fixture
def annotated(trained_run, tmp_path):
    """A COCO file boxing the centre of every abnormal synthetic test image, and a strata CSV."""
    from PIL import Image

    from zoo.data import load_dataset

    root = trained_run["data"]
    test = load_dataset(root).test
    pos = test[test["label"] == 1]
    images, anns = [], []
    for k, p in enumerate(pos["path"], 1):
        w, h = Image.open(p).size
        images.append({"id": k, "file_name": f"test/{Path(p).name}", "width": w, "height": h})
        anns.append({"id": k, "image_id": k, "category_id": 1, "bbox": [w * 0.3, h * 0.3, w * 0.4, h * 0.4],
                     "area": 0.16 * w * h, "iscrowd": 0})
    coco = tmp_path / "ann.coco.json"
    coco.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    ids = sorted(test["id"].unique())
    strata = tmp_path / "meta.csv"
    pd.DataFrame({"id": ids, "hardware": [i % 2 for i in range(len(ids))]}).to_csv(strata, index=False)
    return {"run": trained_run["out"], "data": root, "coco": coco, "strata": strata, "n_pos": len(pos)}


def test_bone_zoo_evaluate_writes_it_all(annotated, tmp_path):
    from conftest import _run_in_process

    out = tmp_path / "eval"
    p = _run_in_process("evaluate", [str(annotated["run"]), "--data", str(annotated["data"]), "--report-dir",
                                     str(out), "--strata", str(annotated["strata"]), "--annotations",
                                     str(annotated["coco"]), "--loc-methods", "gradcam", "eigencam",
                                     "--road-samples", "1", "--quiet"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "auc 95% CI" in report and "## Paired comparisons (DeLong)" in report and "the ensemble's AUC is" in report
    assert "## Subgroups" in report and "| hardware" in report
    assert "## Localisation against ground truth" in report and "ensemble (fused)" in report
    assert (out / "localisation.png").stat().st_size > 5000 and "localisation.png" in report
    metrics = pd.read_csv(out / "metrics.csv")
    assert (metrics["auc_lo"] <= metrics["auc"]).all() and (metrics["auc"] <= metrics["auc_hi"]).all()
    loc = pd.read_csv(out / "localisation.csv")
    assert set(loc["method"]) == {"gradcam", "eigencam"}
    assert set(loc["member"]) == {*TINY, "ensemble (fused)"}
    assert (loc["images"] == annotated["n_pos"]).all()
    assert loc["energy_chance"].round(2).eq(0.16).all()  # the box is 40% x 40% of every image
    members = loc[loc["member"] != "ensemble (fused)"]
    assert (members["road_images"] == 1).all() and members["road"].notna().all()
    assert (out / "predictions.csv").is_file() and "auc_lo" in p.stdout


def test_predict_strata_without_evaluate_is_one_clear_error(annotated, tmp_path):
    from conftest import run_script

    p = run_script("predict.py", "--data", annotated["data"], "--models", annotated["run"], "--strata",
                   annotated["strata"], "-output", tmp_path / "p.csv", cwd=tmp_path)
    assert p.returncode == 2 and "add --evaluate" in p.stderr and not (tmp_path / "p.csv").exists()
