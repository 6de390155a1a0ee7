"""Do the zoo's heatmaps point at the fracture? FracAtlas' own boxes against every CAM method, member and the fused
ensemble CAM; ROAD faithfulness; the ensemble-vs-best-member DeLong test. CPU-sized defaults:

  python bench/explain.py --models regnetx_002 resnet10t --img-size 128 --epochs 4

Trains a small zoo with train_all.py (or reuses --run), then runs
``bone-zoo evaluate RUN --data DIR --annotations DIR/annotations.coco.json --strata DIR/metadata.csv`` into
bench/out/explain/ (git-ignored) and prints the localisation table and the paired tests as markdown.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fracatlas-hand"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA), help="dataset folder with annotations.coco.json (default %(default)s)")
    p.add_argument("--models", nargs="+", default=["regnetx_002", "resnet10t"])
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--run", default=None, help="an existing run folder to evaluate instead of training one")
    p.add_argument("--road-samples", type=int, default=16)
    p.add_argument("--loc-methods", nargs="+", default=None, help="CAM methods (default: all)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "explain"))
    args = p.parse_args()
    data = Path(args.data)
    if not (data / "annotations.coco.json").is_file():
        print(f"skip: {data / 'annotations.coco.json'} not present")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Path(args.run) if args.run else out / "weights"
    if not args.run:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "train_all.py"), "--data", str(data), "--models", *args.models,
                        "--img-size", str(args.img_size), "--epochs", str(args.epochs), "--out", str(run), "--quiet"],
                       check=True)
        print(f"train_all: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    report = out / "report"
    cmd = [sys.executable, "-m", "zoo", "evaluate", str(run), "--data", str(data), "--report-dir", str(report),
           "--annotations", str(data / "annotations.coco.json"), "--road-samples", str(args.road_samples), "--quiet"]
    if (data / "metadata.csv").is_file():
        cmd += ["--strata", str(data / "metadata.csv")]
    if args.loc_methods:
        cmd += ["--loc-methods", *args.loc_methods]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"evaluate: {time.perf_counter() - t0:.0f}s", file=sys.stderr)

    import pandas as pd

    loc = pd.read_csv(report / "localisation.csv")
    cols = ["member", "method", "images", "pointing", "pointing_lo", "pointing_hi", "pointing_chance", "energy",
            "energy_lo", "energy_hi", "energy_chance", "road", "road_lo", "road_hi", "road_random", "road_images"]
    print(loc[cols].to_markdown(index=False, floatfmt=".3f"))
    board = pd.read_csv(run / "leaderboard.csv")
    column = "member" if "member" in board else "backbone"  # a pre-#20 leaderboard named members "backbone"
    best = board.sort_values("val_auc", ascending=False)[column].iloc[0]  # chosen on validation, not on test
    text = (report / "report.md").read_text()
    print(f"\nbest member by validation AUC: {best}")
    for line in text.splitlines():
        if line.startswith("- the ensemble's AUC"):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
