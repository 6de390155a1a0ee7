"""Benchmark on real radiographs: ../shared/data/fracatlas-hand (FracAtlas, CC BY 4.0, Abedeen et al. 2023).

Trains a small zoo with train_all.py, predicts the test split with predict.py --evaluate, and times the image cache
(first decode vs. cached reads). Writes everything under bench/out/ (git-ignored). CPU-sized defaults:

  python bench/fracatlas.py --models regnetx_002 resnet10t --img-size 128 --epochs 4
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fracatlas-hand"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA), help="dataset folder (default %(default)s)")
    p.add_argument("--models", nargs="+", default=["regnetx_002", "resnet10t"])
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=False)
    args = p.parse_args()
    if not Path(args.data).is_dir():
        print(f"skip: {args.data} not present")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from zoo.data import load_dataset, load_images

    ds = load_dataset(args.data)
    paths = ds.train["path"].tolist()
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        load_images(paths, args.img_size, cache, quiet=True)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        arr = load_images(paths, args.img_size, cache, quiet=True)
        _ = [int(arr.array[i].sum()) for i in range(len(paths))]
        cached = time.perf_counter() - t0
    print(f"image cache, {len(paths)} images at {args.img_size}px: first decode {first:.2f}s "
          f"({len(paths) / first:.0f} img/s), cached read {cached:.3f}s ({len(paths) / cached:.0f} img/s)")

    run = out / "weights"
    t0 = time.perf_counter()
    cmd = [sys.executable, str(ROOT / "train_all.py"), "--data", args.data, "--models", *args.models,
           "--img-size", str(args.img_size), "--epochs", str(args.epochs), "--lr", str(args.lr), "--out", str(run),
           "--quiet", "--pretrained" if args.pretrained else "--no-pretrained"]
    subprocess.run(cmd, check=False)
    print(f"train_all: {time.perf_counter() - t0:.0f}s")
    subprocess.run([sys.executable, str(ROOT / "predict.py"), "--data", args.data, "--models", str(run),
                    "-output", str(out / "test_predictions.csv"), "--evaluate", "--quiet"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
