"""Do the CAMs rank the fracture's pixels first? Two measures that read only the order of a map's values, beside the
energy share (which any increasing transform of the map moves: a squared map scores more, pointing where it did).
For each run's members and fused map, on the test split's abnormal images with FracAtlas boxes:

- **pixel AUROC**: the chance that a pixel inside a box outranks one outside it (0.5 = chance, 1 = every box pixel
  first);
- **top-2% share**: the share of the map's top 2% of pixels that lies inside the boxes (chance = the boxes' share).

  python bench/cam_order.py bench/out/boxes-v3-e32/seed0-boxes bench/out/boxes-v3-e48/seed0-boxes

Grad-CAM as the demo shows it (:func:`zoo.explain.explain_study`), boxes mapped through the input's resize and pad as
``zoo evaluate`` maps them; mean over images with a 95% bootstrap interval. Skips cleanly without the dataset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fracatlas-hand"
sys.path.insert(0, str(ROOT))
TOP = 0.02


def order_scores(cam: np.ndarray, inside: np.ndarray, top: float = TOP) -> dict:
    """``{"auroc", "top_share"}`` of one map against a boolean mask of its pixels (NaN where the mask is empty or
    full: no order to judge)."""
    from sklearn.metrics import roc_auc_score

    cam, inside = np.asarray(cam, float).ravel(), np.asarray(inside, bool).ravel()
    if inside.all() or not inside.any():
        return {"auroc": float("nan"), "top_share": float("nan")}
    k = max(1, int(round(top * cam.size)))
    first = np.argsort(-cam, kind="stable")[:k]
    # ties count half, so a flat map scores 0.5
    return {"auroc": float(roc_auc_score(inside, cam)), "top_share": float(inside[first].mean())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="train_all.py output folders")
    p.add_argument("--data", type=Path, default=None, help=f"dataset folder (default {DATA})")
    args = p.parse_args()
    data = args.data or DATA
    if not (data / "annotations.coco.json").is_file():
        if args.data is not None:
            p.error(f"no annotations.coco.json in {data}")
        print(f"skip: {data / 'annotations.coco.json'} not present")
        return 0
    import pandas as pd

    from zoo.data.layouts import load_dataset
    from zoo.ensemble import Ensemble
    from zoo.explain import explain_study
    from zoo.localisation import FUSED, _box_mask, _mean_ci, boxes_by_image, load_annotations, pad_geometry
    from zoo.members import members_in

    test = load_dataset(data).test
    pos = test[test["label"] == 1]
    boxes = boxes_by_image(load_annotations(data / "annotations.coco.json"), pos["path"].tolist(), data)
    pos = pos[pos["path"].isin(boxes)]
    rows = []
    for run in args.runs:
        members = members_in(run)
        if not members:
            p.error(f"{run} holds no member")
        ens = Ensemble.from_paths([str(m) for m in members])
        for path in pos["path"]:
            ex = explain_study(ens, [path], "gradcam", cache_dir=None)
            if not ex.readable:
                continue
            b, h, w = boxes[path]
            for name in [*ens.names, FUSED]:
                cam = ex.fused[0] if name == FUSED else ex.cams[name][0]
                inside = _box_mask(pad_geometry(h, w, cam.shape[0]).to_input(b), cam.shape)
                rows.append({"run": str(run), "map": name, "chance": float(inside.mean()),
                             **order_scores(cam, inside)})
    table = pd.DataFrame(rows)

    def mean_ci(x: pd.Series) -> str:
        mean, lo, hi = _mean_ci(x.to_numpy())
        return f"{mean:.3f} ({lo:.3f}–{hi:.3f})"

    out = table.groupby(["run", "map"], sort=False).agg(
        images=("auroc", "count"), **{"pixel AUROC (95% CI)": ("auroc", mean_ci),
                                      "top-2% share (95% CI)": ("top_share", mean_ci),
                                      "top-2% chance": ("chance", "mean")}).reset_index()
    print(out.to_markdown(index=False, floatfmt=".4f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
