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
            ids |= set(pd.read_csv(f, dtype={"id": str}, keep_default_na=False)["id"])
    return ids


def check_members(members: list[Path], boxes: Path, train_ids: set[str]) -> set[str]:
    """The studies every member held out, after checking that the labelling can be trusted: each member trained
    with ``boxes`` (config.json's SHA-256), all split alike, and the held-out ids are this dataset's (not the
    pseudonyms of a pushed member, not another dataset's). Raises ValueError saying what is wrong."""
    from zoo.localisation import annotations_record
    from zoo.members import read_member_config

    sha = annotations_record(boxes)["sha256"]
    for m in members:
        record = (read_member_config(m).get("training") or {}).get("boxes")
        if not record:
            raise ValueError(f"{m.name} trained without --boxes: it has no box term to fit")
        if record.get("sha256") != sha:
            raise ValueError(f"{m.name} trained with another boxes file ({record.get('file')}, SHA-256 "
                             f"{str(record.get('sha256'))[:12]}…) than {boxes} ({sha[:12]}…)")
    splits = [held_out_ids(m) for m in members]
    if any(s != splits[0] for s in splits):
        raise ValueError("the members hold out different studies (different seeds or folds): score one member "
                         "folder at a time")
    held = splits[0]
    if not held:
        raise ValueError(f"{members[0]} has no val_predictions.csv or calibration_predictions.csv: which images it "
                         "held out is unknown")
    if not held <= train_ids:
        raise ValueError(f"{len(held - train_ids)} of the {len(held)} held-out study ids are not in the training "
                         "split (pseudonymised predictions of a pushed member, or another dataset)")
    return held


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="train_all.py output folder (or one member folder)")
    p.add_argument("--boxes", type=Path, required=True, help="the COCO file the run trained with")
    p.add_argument("--data", type=Path, default=None, help=f"dataset folder (default {DATA})")
    args = p.parse_args()
    data = args.data or DATA
    if not data.exists():
        if args.data is not None:
            p.error(f"no dataset at {data}")
        print(f"no dataset at {data}: nothing to score", file=sys.stderr)
        return 0
    if not args.run.is_dir():
        p.error(f"no run folder at {args.run}")
    if not args.boxes.exists():
        p.error(f"no boxes file at {args.boxes}")
    from zoo.data.layouts import load_dataset
    from zoo.ensemble import Ensemble
    from zoo.localisation import LocalisationOptions, load_annotations, localise
    from zoo.members import members_in, read_member_config

    members = members_in(args.run)  # RUN itself when it is a member folder
    if not members:
        p.error(f"{args.run} holds no member (no model.safetensors and config.json in it or in a sub-folder)")
    images = load_dataset(data).train
    try:
        held = check_members(members, args.boxes, set(images["id"]))
    except ValueError as e:
        p.error(str(e))
    ens = Ensemble.from_paths([str(m) for m in members])
    images = images[images["label"].notna()][["path", "id", "label"]]
    records = localise(ens, images, load_annotations(args.boxes, flag="--boxes"), data,
                       LocalisationOptions(methods=("gradcam",), road_samples=0))
    if records.empty:
        p.error(f"{args.boxes} annotates no abnormal image of {data}'s training split")
    records["images"] = records["id"].isin(held).map({True: "held out", False: "trained on"})
    trained = records[records["images"] == "trained on"]["path"].nunique()
    for m in members:
        expected = read_member_config(m)["training"]["boxes"].get("annotated_train_positives")
        if expected is not None and expected != trained:
            print(f"warning: {m.name}'s box term saw {expected} annotated positives, {trained} are scored as trained "
                  "on (an unreadable image, or a split this script does not see)", file=sys.stderr)
    table = (records.groupby(["images", "member"])
             .agg(n=("hit", "size"), pointing=("hit", "mean"), energy=("energy", "mean"),
                  chance=("chance_energy", "mean"))
             .assign(**{"energy / chance": lambda t: t["energy"] / t["chance"]}).reset_index())
    print(f"{args.run}: {len(records['path'].unique())} annotated abnormal training-split images")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
