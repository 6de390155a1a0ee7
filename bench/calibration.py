"""Calibration and triage on real radiographs: ECE before/after calibration and triage at a target error rate.

  python bench/calibration.py                          # FracAtlas hand, 2 small members, 128 px, 6 epochs, CPU

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
                   "the test AUC of round 1 (labelled only) and round 2 (with pseudo-labels)")
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
    import json

    if not (out / "weights" / "leaderboard.csv").is_file():
        subprocess.run([sys.executable, str(ROOT / "train_all.py"), "--data", args.data, "--models", *args.models,
                        "--img-size", str(args.img_size), "--epochs", str(args.epochs), "--lr", str(args.lr),
                        "--out", str(out / "weights"), "--semi-supervised", "--quiet"], check=True)
    used = json.loads((out / "weights" / args.models[0] / "config.json").read_text())["training"]["semi_supervised"]
    print(f"pseudo-labels: {used}")
    for name, run in (("round 1 (labelled only)", out / "weights" / "round1"), ("round 2 (+ pseudo-labels)",
                                                                              out / "weights")):
        folder = out / f"{name.split()[0]}{name.split()[1]}"  # round1, round2
        subprocess.run([sys.executable, str(ROOT / "predict.py"), "--data", args.data, "--models", str(run),
                        "--evaluate", "--quiet", "-output", str(Path(folder) / "test.csv")], check=True)
        report = (Path(folder) / "report.md").read_text()
        print(f"\n### test split, {name}\n")
        print(report[report.index("## Overall"):report.index("## Per body part")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
