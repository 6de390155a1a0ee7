"""How prediction and training costs grow with the dataset: 1x, 4x and 16x the FracAtlas images.

  python bench/scale.py                                 # 1x 4x 16x (16x: ~17,000 images), 128 px resnet10t on CPU
  python bench/scale.py --scales 1 2 --size 64          # a quick check that it works

The k-x set is FracAtlas (../shared/data/fracatlas-hand: its train/ and test/ images) with every image linked k
times under distinct names (study ids ``ID`` + ``rJ``; symlinks under bench/out/scale/, git-ignored), labels
copied. Each case runs in a fresh child process (bench/speed.py's ``child``: wall, CPU times and peak RSS from
os.wait4, imports included):

- prediction: ``predict.py`` over the k-x test split (217 k images) with an untrained member (speed does not
  depend on the weights) on ``--backend``, into an empty cache folder (decode included);
- training: ``train_all.py`` for one epoch over the k-x train split (856 k images, --val-fraction 0.1, no export,
  no calibration split) into an empty cache folder; the epoch's own time (metrics.jsonl ``train_s``) is reported
  beside the wall time (which includes decoding and validation).

Prediction's ``s_per_1000`` is the scoring itself (``score_s``: the time inside :func:`zoo.sharding.predict_chunked`,
decoding included; interpreter start, imports and model loading excluded, which would flatter the larger scales);
``wall_s_per_1000`` is beside it. Peak RSS is also reported above an idle child's (the same imports, nothing done):
``rss_above_idle_gb``. A case whose command fails or refuses (exit code not 0, e.g. a leftover ``.parts`` folder,
which is removed before each case) stops the bench. Also the decoded cache's disk use per case. Targets (issue 23):
seconds per 1000 images at 16x within 10% of 1x, peak RSS at 16x within 1.5x of 1x. Writes
bench/out/scale/scale.csv and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import DATA, ROOT, case_or_skip, child, zoo_predict, zoo_train  # noqa: E402  (one child runner for the benches)


def idle(a: dict) -> dict:
    """The imports of a prediction case and nothing else: the baseline its peak RSS is reported above."""
    import timm  # noqa: F401
    import torch  # noqa: F401

    import predict  # noqa: F401
    import zoo.inference  # noqa: F401

    return {"rc": 0}


CASES = {"zoo_predict": zoo_predict, "zoo_train": zoo_train, "idle": idle}


def replicate(src: Path, dst: Path, k: int) -> dict[str, int]:
    """``dst``: a competition-layout folder holding every image of ``src`` k times under distinct study ids (symlinks),
    with train.csv and test_labels.csv to match. Returns the image counts per split."""
    import pandas as pd

    counts = {}
    for split in ("train", "test"):
        (dst / split).mkdir(parents=True, exist_ok=True)
        files = sorted(f for f in (src / split).iterdir() if f.is_file())
        for f in files:
            study, rest = f.name.split("_image", 1) if "_image" in f.name else (f.stem, f.suffix)
            for j in range(k):
                link = dst / split / f"{study}r{j}_image{rest}"
                if not link.exists():
                    link.symlink_to(f.resolve())
        counts[split] = len(files) * k
    for name in ("train.csv", "test_labels.csv"):
        if (src / name).is_file():
            df = pd.read_csv(src / name, dtype={"id": str})
            reps = [df.assign(id=df["id"] + f"r{j}") for j in range(k)]
            pd.concat(reps, ignore_index=True).to_csv(dst / name, index=False)
    return counts


def du(path: Path) -> float:
    """Bytes under ``path`` (GB)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9 if path.exists() else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA), help="competition-layout folder with train/, test/, train.csv")
    p.add_argument("--scales", nargs="+", type=int, default=[1, 4, 16], help="copies of every image "
                   "(default %(default)s)")
    p.add_argument("--size", type=int, default=128, help="image size, px (default %(default)s)")
    p.add_argument("--backbone", default="resnet10t", help="member backbone (default %(default)s)")
    p.add_argument("--backend", default="auto", help="predict.py --backend (default %(default)s: the untrained "
                   "member has no graphs, so PyTorch)")
    p.add_argument("--cases", nargs="+", choices=["predict", "train"], default=["predict", "train"])
    p.add_argument("--chunk-size", type=int, default=None, help="predict.py --chunk-size (default: predict's)")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each prediction case (its median run is "
                   "reported, every run's score_s beside it; the 1x case lasts about a second, so one run is "
                   "at the mercy of the timer and the CPU's clock) (default %(default)s)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "scale"))
    p.add_argument("--_case", help=argparse.SUPPRESS)
    p.add_argument("--_args", help=argparse.SUPPRESS)
    args = p.parse_args()
    if (done := case_or_skip(args, CASES)) is not None:
        return done
    import pandas as pd

    from zoo.model import BoneClassifier
    from zoo.runtime import machine_summary
    from zoo.sharding import parts_dir

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    member = out / "member" / args.backbone
    if not (member / "model.safetensors").is_file() or \
            json.loads((member / "config.json").read_text()).get("img_size") != args.size:
        shutil.rmtree(member, ignore_errors=True)
        BoneClassifier(args.backbone, img_size=args.size).save_member(member)
    rows = []
    baseline = child("idle", {}, out, script=Path(__file__))["peak_rss_gb"]  # interpreter + imports
    print(f"idle-import peak RSS: {baseline:.3g} GB", flush=True)
    for k in args.scales:
        data = out / f"data-x{k}"
        counts = replicate(Path(args.data), data, k)
        if "predict" in args.cases:
            cache, csv = out / f"cache-predict-x{k}", out / f"p-x{k}.csv"
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(parts_dir(csv), ignore_errors=True)  # an interrupted earlier run's: predict would refuse
            argv = ["--data", str(data), "--models", str(member), "--backend", args.backend, "--quiet",
                    "--cache-dir", str(cache), "-output", str(csv)]
            argv += ["--chunk-size", str(args.chunk_size)] if args.chunk_size else []
            runs = []
            for _ in range(args.repeats):  # each into an empty cache (decode included); the median run is kept
                shutil.rmtree(cache, ignore_errors=True)
                runs.append(child("zoo_predict", {"argv": argv, "n": counts["test"]}, out, script=Path(__file__)))
                runs[-1]["cache_gb"] = du(cache)
            r = sorted(runs, key=lambda x: x["score_s"])[len(runs) // 2]
            peak = max(x["peak_rss_gb"] for x in runs)
            rows.append({"case": "predict", "scale": k, "images": counts["test"], "wall_s": r["wall_s"],
                         "score_s": r["score_s"], "s_per_1000": 1000 * r["score_s"] / counts["test"],
                         "score_s_runs": " ".join(f"{x['score_s']:.3g}" for x in runs),
                         "wall_s_per_1000": 1000 * r["wall_s"] / counts["test"],
                         "peak_rss_gb": peak, "rss_above_idle_gb": peak - baseline,
                         "cache_gb": r["cache_gb"]})
            print(rows[-1], flush=True)
        if "train" in args.cases:
            cache, run = out / f"cache-train-x{k}", out / f"run-x{k}"
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(run, ignore_errors=True)
            argv = ["--data", str(data), "--models", args.backbone, "--epochs", "1", "--img-size", str(args.size),
                    "--batch-size", str(args.batch_size), "--val-fraction", "0.1", "--calibration-fraction", "0",
                    "--no-pretrained", "--no-export", "--cache-dir", str(cache), "--out", str(run), "--quiet"]
            r = child("zoo_train", {"argv": argv, "out": str(run), "backbone": args.backbone}, out,
                      script=Path(__file__))
            rows.append({"case": "train (1 epoch)", "scale": k, "images": r["images"], "wall_s": r["wall_s"],
                         "epoch_s": r["loop_s"], "s_per_1000": 1000 * r["loop_s"] / r["images"],
                         "peak_rss_gb": r["peak_rss_gb"], "rss_above_idle_gb": r["peak_rss_gb"] - baseline,
                         "cache_gb": du(cache)})
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    for case in df["case"].unique():  # each cost against the smallest scale's
        c = df["case"] == case
        first = df[c].iloc[0]
        df.loc[c, "s_per_1000_x"] = df.loc[c, "s_per_1000"] / first["s_per_1000"]
        df.loc[c, "rss_x"] = df.loc[c, "peak_rss_gb"] / first["peak_rss_gb"]
        df.loc[c, "rss_above_idle_x"] = df.loc[c, "rss_above_idle_gb"] / first["rss_above_idle_gb"]
    df.to_csv(out / "scale.csv", index=False)
    print(f"\nmachine: {machine_summary()}\n{args.size} px, {args.backbone}, predict --backend {args.backend}; "
          f"idle-import peak RSS {baseline:.3g} GB; command: python bench/scale.py {' '.join(sys.argv[1:])}")
    cols = [c for c in ["case", "scale", "images", "wall_s", "score_s", "epoch_s", "s_per_1000", "s_per_1000_x",
                        "score_s_runs", "wall_s_per_1000", "peak_rss_gb", "rss_x", "rss_above_idle_gb",
                        "rss_above_idle_x", "cache_gb"] if c in df]
    print(df[cols].to_markdown(index=False, floatfmt=".3g"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
