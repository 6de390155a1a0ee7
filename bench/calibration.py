"""Calibration and triage on real radiographs: ECE before/after calibration and triage at a target error rate.

  python bench/calibration.py                          # FracAtlas hand, 2 small members, 128 px, 6 epochs, CPU
  python bench/calibration.py --semi-supervised --seeds 0 1 2   # the pseudo-labelling gain, repeated over seeds

Trains on ``train`` (validation split inside it), predicts ``test`` twice (raw with --no-calibrate, and calibrated
with --triage), and prints ECE / Brier / AUC of members and ensemble (raw vs calibrated) and the triage share decided
and error among decided studies, overall and per body part. Numbers go to bench/README.md by hand, with the command.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fracatlas-hand"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--models", nargs="+", default=["resnet10t", "regnetx_002"])
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--triage", type=float, default=0.05)
    p.add_argument("--semi-supervised", action="store_true", help="instead: train with --semi-supervised and compare "
                   "the test AUC of round 1 (labelled only) and round 2 (with pseudo-labels), once per --seeds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="with --semi-supervised: training seeds; the "
                   "gain is reported per seed and as mean and standard deviation (default: 0)")
    p.add_argument("--pseudo-confidence", type=float, default=0.9, help="with --semi-supervised: passed to "
                   "train_all.py (default %(default)s; 0.5 uses every unlabelled study with its soft target)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "calibration"))
    args = p.parse_args()
    if not Path(args.data).is_dir():
        print(f"skip: {args.data} not present")
        return 0
    out = Path(args.out)
    if args.semi_supervised:
        return semi_supervised(args, out / "semi")
    run = out / "weights"
    if not (run / "leaderboard.csv").is_file():
        subprocess.run([sys.executable, str(ROOT / "train_all.py"), "--data", args.data, "--models", *args.models,
                        "--img-size", str(args.img_size), "--epochs", str(args.epochs), "--lr", str(args.lr),
                        "--out", str(run), "--quiet"], check=True)
    print((run / "leaderboard.md").read_text())
    for name, extra in (("raw", ["--no-calibrate"]), ("calibrated", ["--triage", str(args.triage)])):
        subprocess.run([sys.executable, str(ROOT / "predict.py"), "--data", args.data, "--models", str(run),
                        "--evaluate", "--quiet", "-output", str(out / name / "test.csv"), *extra], check=True)
        print(f"\n### test split, {name}\n")
        report = (out / name / "report.md").read_text()
        print(report[report.index("## Overall"):report.index("## Per body part")])
        if "## Triage" in report:
            print(report[report.index("## Triage"):])
    return 0


def semi_supervised(args, out: Path) -> int:
    """Round 1 (labelled only) and round 2 (+ pseudo-labels) of each seed, scored on test; the gain per seed."""
    import json

    import numpy as np
    import pandas as pd

    rows = []
    for seed in args.seeds:
        weights = out / f"conf{args.pseudo_confidence}" / f"seed{seed}" / "weights"
        if not (weights / "leaderboard.csv").is_file():
            subprocess.run([sys.executable, str(ROOT / "train_all.py"), "--data", args.data, "--models", *args.models,
                            "--img-size", str(args.img_size), "--epochs", str(args.epochs), "--lr", str(args.lr),
                            "--seed", str(seed), "--out", str(weights), "--semi-supervised", "--pseudo-confidence",
                            str(args.pseudo_confidence), "--quiet"], check=True)
        used = json.loads((weights / args.models[0] / "config.json").read_text())["training"]["semi_supervised"]
        row = {"seed": seed, "pseudo_labelled": used["pseudo_labelled_studies"],
               "pseudo_abnormal_share": used["pseudo_abnormal_share"]}
        for rnd, run in (("round1", weights / "round1"), ("round2", weights)):
            folder = weights.parent / rnd
            subprocess.run([sys.executable, str(ROOT / "predict.py"), "--data", args.data, "--models", str(run),
                            "--evaluate", "--quiet", "-output", str(folder / "test.csv")], check=True,
                           stdout=subprocess.DEVNULL)
            m = pd.read_csv(folder / "metrics.csv")
            m = m[m["part"] == "ALL"].set_index("model")
            for name in [*args.models, "ensemble"]:
                row[f"{rnd} {name}"] = float(m.loc[name, "auc"])
            row[f"{rnd} ensemble ece"] = float(m.loc["ensemble", "ece"])
        row["gain"] = row["round2 ensemble"] - row["round1 ensemble"]
        rows.append(row)
        print(pd.DataFrame([row]).to_markdown(index=False, floatfmt=".3f"), flush=True)
    table = pd.DataFrame(rows)
    print("\n### test split, per seed\n")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    gains = table["gain"].to_numpy()
    sd = float(np.std(gains, ddof=1)) if len(gains) > 1 else float("nan")
    print(f"\nensemble AUC gain (round 2 - round 1): mean {gains.mean():+.3f}, sd {sd:.3f} over {len(gains)} seed(s); "
          f"per seed {', '.join(f'{g:+.3f}' for g in gains)}")
    table.to_csv(out / f"conf{args.pseudo_confidence}" / "semi_supervised.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
