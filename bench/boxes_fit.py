"""Does a member trained with ``--boxes`` fit its own boxes? Its CAMs scored on the *training* split's annotated
abnormal images, split by whether the member trained on the image (its box term saw it) or held it out (its
validation and calibration studies). Where the two agree, the box term is under-fitted, not over-fitted: more data
would not close the gap to the grid's ceiling, a stronger fit would. FracAtlas (../shared/data/fracatlas-hand; CC BY
4.0, Abedeen et al. 2023):

  python bench/boxes_fit.py bench/out/boxes-v3/seed2-boxes --boxes bench/out/boxes-v3/train_boxes.coco.json

RUN is a ``train_all.py`` output folder (one sub-folder a member); ``--boxes`` the file the run trained with (the
training split's boxes only). Grad-CAM, pointing game (15 px) and energy share with :mod:`zoo.localisation`, as
``predict.py --evaluate`` scores the test split; no test image is read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fracatlas-hand"
sys.path.insert(0, str(ROOT))


def held_out_ids(member: Path) -> set[str]:
    """The studies a member did not train on: those of its validation and calibration predictions."""
    ids: set[str] = set()
    for name in ("val_predictions.csv", "calibration_predictions.csv"):
        f = member / name
        if f.exists():
            ids |= set(pd.read_csv(f, dtype={"id": str})["id"])
    return ids


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="train_all.py output folder")
    p.add_argument("--boxes", type=Path, required=True, help="the COCO file the run trained with")
    p.add_argument("--data", type=Path, default=DATA, help=f"dataset folder (default {DATA})")
    args = p.parse_args()
    if not args.data.exists():
        print(f"no dataset at {args.data}: nothing to score", file=sys.stderr)
        return 0
    from zoo.data.layouts import load_dataset
    from zoo.ensemble import Ensemble
    from zoo.localisation import LocalisationOptions, load_annotations, localise

    members = sorted(d for d in args.run.iterdir() if (d / "config.json").exists())
    if not members:
        p.error(f"{args.run} holds no member (no sub-folder with config.json)")
    splits = [held_out_ids(m) for m in members]
    if any(s != splits[0] for s in splits):
        p.error("the members hold out different studies (different seeds or folds): score one member at a time")
    held = splits[0]
    if not held:
        p.error(f"{members[0]} has no val_predictions.csv or calibration_predictions.csv: which images it held out "
                "is unknown")
    ens = Ensemble.from_paths([str(m) for m in members])
    images = load_dataset(args.data).train
    images = images[images["label"].notna()][["path", "id", "label"]]
    records = localise(ens, images, load_annotations(args.boxes, flag="--boxes"), args.data,
                       LocalisationOptions(methods=("gradcam",), road_samples=0))
    if records.empty:
        p.error(f"{args.boxes} annotates no abnormal image of {args.data}'s training split")
    records["images"] = records["id"].isin(held).map({True: "held out", False: "trained on"})
    table = (records.groupby(["images", "member"])
             .agg(n=("hit", "size"), pointing=("hit", "mean"), energy=("energy", "mean"),
                  chance=("chance_energy", "mean"))
             .assign(**{"energy / chance": lambda t: t["energy"] / t["chance"]}).reset_index())
    print(f"{args.run}: {len(records['path'].unique())} annotated abnormal training-split images")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
