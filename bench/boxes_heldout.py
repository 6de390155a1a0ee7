"""How ``--boxes`` settings localise, scored on held-out images of the training split only (how the loss and its
defaults were chosen; the test split is left to ``bench/explain.py --boxes``). FracAtlas (../shared/data/fracatlas-hand;
CC BY 4.0, Abedeen et al. 2023), one member per setting, the modern recipe, no ImageNet weights:

  python bench/boxes_heldout.py --settings none energy:1:1 pointing:0.3:0 --img-size 384 --epochs 16

A setting is ``none`` (no boxes) or ``LOSS:WEIGHT:WARMUP``: ``pointing`` is the loss ``train_all.py --boxes`` trains
(:func:`zoo.boxes.pointing_loss`); ``energy`` is the loss it replaced (``1 - energy share`` of the min-max-normalised,
upsampled Grad-CAM), kept here as the reference. Every setting trains on the same split with the same seed, with the
boxes of the training split only (the member's own training images use them); the scores are on the member's
validation and calibration images (held out of its training; abnormal, with FracAtlas boxes): pointing game (Wilson
interval) and energy share (bootstrap interval) of the kept member (best validation AUC, what a user gets) and of the
last epoch's weights, and the study AUC on the same held-out studies (DeLong interval). Writes OUT/heldout.csv.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fracatlas-hand"
sys.path.insert(0, str(ROOT))


def energy_reference(BoxLoss):  # noqa: N803 (a class)
    """The loss before the soft pointing game: ``1 - energy share`` of the differentiable, min-max-normalised Grad-CAM
    resized to the input, averaged over the annotated positives."""
    from zoo.boxes import gradcam

    class EnergyLoss(BoxLoss):
        def forward(self, logits, target, mask=None):
            loss = self.base(logits, target)
            activation = self._held.pop("a", None)
            if mask is None or activation is None or self.weight * self.ramp == 0:
                return loss
            mask = mask.reshape(len(mask), -1, *mask.shape[-2:])[:, 0].float()
            pick = (target.reshape(-1) >= 0.5) & (mask.flatten(1).amax(1) > 0)
            if not bool(pick.any()):
                return loss
            cam = gradcam(activation, logits.reshape(-1)[pick], mask.shape[-1], self.reshape)[pick]
            share = (cam * mask[pick]).flatten(1).sum(1) / cam.flatten(1).sum(1).clamp_min(1e-6)
            return loss + self.weight * self.ramp * (1 - share).mean()

    return EnergyLoss


def held_out_scores(model, paths, images, boxes) -> dict:
    """Pointing game and energy share of ``model``'s Grad-CAMs (:func:`zoo.localisation.summarise`)."""
    import pandas as pd

    from zoo.cam import compute_cams
    from zoo.localisation import chance_levels, image_scores, summarise

    rows = []
    for start in range(0, len(paths), 32):
        cams, _ = compute_cams(model, images[start:start + 32], "gradcam")
        for p, cam in zip(paths[start:start + 32], cams, strict=True):
            b, h, w = boxes[p]
            cp, ce = chance_levels(b, h, w)
            rows.append({"path": p, "member": "", "method": "gradcam", **image_scores(cam, b, h, w),
                         "chance_point": cp, "chance_energy": ce, "road": float("nan"), "road_random": float("nan")})
    return summarise(pd.DataFrame(rows)).iloc[0].to_dict()


def grid_ceiling(boxes_file: Path, sizes: list[int], stride: int = 32) -> list[dict]:
    """The best pointing game any CAM can score at each input size: pytorch-grad-cam resizes the CAM layer's grid
    (``size / stride`` cells a side) bilinearly with half-pixel centres, so a map's first maximum lies on a cell
    centre (on row or column 0 for a cell of the first row or column, whose value is held up to the border), and an
    image can be hit only if one of those points is within the tolerance of one of its boxes (stored pixels)."""
    import numpy as np

    from zoo.localisation import TOLERANCE, _distance_to_boxes, pad_geometry

    coco = json.loads(boxes_file.read_text())
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    images = [i for i in coco["images"] if i["id"] in by_image]
    rows = []
    for size in sizes:
        cells = size // stride
        centres = np.floor((np.arange(cells) + 0.5) * size / cells - 0.5)  # input pixels (row or column)
        centres[0] = 0
        hits = 0
        for img in images:
            geo = pad_geometry(img["height"], img["width"], size)
            xs, ys = geo.to_stored(centres[:, None], centres[None, :])
            hits += bool((_distance_to_boxes(xs, ys, np.asarray(by_image[img["id"]], float)) <= TOLERANCE).any())
        rows.append({"img_size": size, "grid": f"{cells}x{cells}", "best pointing game": hits / len(images),
                     "images": len(images)})
    return rows


def run_setting(setting: str, args, data: Path, boxes_file: Path) -> dict:
    import pandas as pd

    import zoo.boxes
    from zoo.config import resolve
    from zoo.data import load_dataset, load_images
    from zoo.localisation import boxes_by_image, load_annotations
    from zoo.model import BoneClassifier
    from zoo.stats import auc_ci
    from zoo.train import Trainer

    loss, weight, warmup = (setting.split(":") + ["", "", ""])[:3] if setting != "none" else ("none", "0", "0")
    if loss not in ("none", "pointing", "energy"):
        raise SystemExit(f"unknown setting {setting!r}: none, pointing:W:WARMUP or energy:W:WARMUP")
    production = zoo.boxes.BoxLoss
    if loss == "energy":
        zoo.boxes.BoxLoss = energy_reference(production)
    out = Path(args.out) / f"{args.backbone}-{args.img_size}-s{args.seed}-{setting.replace(':', '_')}"
    given = {"img_size": args.img_size, "epochs": args.epochs, "seed": args.seed, "pretrained": False, "quiet": True,
             "export": False, "boxes": None if loss == "none" else str(boxes_file)}
    if loss != "none":
        given |= {"box_weight": float(weight), "box_warmup": float(warmup)}
    cfg = resolve("modern", given, backbone=args.backbone)
    trainer = Trainer(cfg, load_dataset(data), out)
    last: dict = {}
    export = trainer.export

    def keep_last(model, *a, **k):  # the last epoch's (EMA) weights, before the best epoch's are loaded
        last["model"] = copy.deepcopy(trainer.accelerator.unwrap_model(model)).eval()
        return export(model, *a, **k)

    trainer.export = keep_last
    t0 = time.perf_counter()
    try:
        trainer.fit()
    finally:
        zoo.boxes.BoxLoss = production
    held = pd.concat([trainer.val_df, trainer.cal_df])
    coco = load_annotations(data / "annotations.coco.json")
    positives = held[held["label"] >= 0.5]["path"].tolist()
    boxes = boxes_by_image(coco, positives, data)
    paths = [p for p in positives if p in boxes]
    images = load_images(paths, args.img_size, quiet=True).array[:]
    kept = held_out_scores(BoneClassifier.load(out), paths, images, boxes)
    final = held_out_scores(last["model"], paths, images, boxes)
    studies = pd.concat([pd.read_csv(out / "val_predictions.csv"), pd.read_csv(out / "calibration_predictions.csv")])
    auc = auc_ci(studies["label"], studies["prob"])
    metrics = json.loads((out / "metrics.json").read_text())
    return {"setting": setting, "backbone": args.backbone, "img_size": args.img_size, "epochs": args.epochs,
            "seed": args.seed, "images": len(paths), "best_epoch": metrics["best_epoch"],
            **{f"kept_{k}": kept[k] for k in ("pointing", "pointing_lo", "pointing_hi", "energy", "energy_lo",
                                              "energy_hi")},
            "pointing_chance": kept["pointing_chance"], "energy_chance": kept["energy_chance"],
            **{f"last_{k}": final[k] for k in ("pointing", "pointing_lo", "pointing_hi", "energy")},
            "auc": auc["auc"], "auc_lo": auc["lo"], "auc_hi": auc["hi"], "studies": len(studies),
            "train_s": round(time.perf_counter() - t0)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA), help="dataset folder with annotations.coco.json (default %(default)s)")
    p.add_argument("--settings", nargs="+", default=["none", "energy:1:1", "pointing:0.3:0"])
    p.add_argument("--backbone", default="resnet10t")
    p.add_argument("--img-size", type=int, default=384)
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "boxes_heldout"))
    p.add_argument("--ceiling", type=int, nargs="+", metavar="PX", help="only print the best pointing game a "
                   "stride-32 CAM grid allows at these sizes (on the training split's boxes), and stop")
    args = p.parse_args()
    data = Path(args.data)
    if not (data / "annotations.coco.json").is_file():
        print(f"skip: {data / 'annotations.coco.json'} not present")
        return 0
    import pandas as pd
    from explain import train_split_boxes  # bench/explain.py: the training split's boxes only

    from zoo.stats import interval

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    boxes_file = train_split_boxes(data, out)
    if args.ceiling:
        print(pd.DataFrame(grid_ceiling(boxes_file, args.ceiling)).to_markdown(index=False, floatfmt=".3f"))
        return 0
    rows = []
    for setting in args.settings:
        rows.append(run_setting(setting, args, data, boxes_file))
        r = rows[-1]
        print(f"{setting}: kept pointing {r['kept_pointing']:.3f}, last {r['last_pointing']:.3f}, AUC {r['auc']:.3f}",
              file=sys.stderr)
    table = pd.DataFrame(rows)
    csv = out / "heldout.csv"
    if csv.is_file():
        table = pd.concat([pd.read_csv(csv), table], ignore_index=True)
    table.to_csv(csv, index=False)
    show = pd.DataFrame({
        "setting": table["setting"], "backbone": table["backbone"], "px": table["img_size"], "seed": table["seed"],
        "best epoch": table["best_epoch"],
        "pointing, kept": [f"{r.kept_pointing:.3f} ({interval(r.kept_pointing_lo, r.kept_pointing_hi)})"
                           for r in table.itertuples()],
        "energy, kept (x chance)": [f"{r.kept_energy:.3f} ({r.kept_energy / r.energy_chance:.1f})"
                                    for r in table.itertuples()],
        "pointing, last epoch": [f"{r.last_pointing:.3f} ({interval(r.last_pointing_lo, r.last_pointing_hi)})"
                                 for r in table.itertuples()],
        "energy, last (x chance)": [f"{r.last_energy:.3f} ({r.last_energy / r.energy_chance:.1f})"
                                    for r in table.itertuples()],
        "held-out AUC": [f"{r.auc:.3f} ({interval(r.auc_lo, r.auc_hi)})" for r in table.itertuples()]})
    print(show.to_markdown(index=False, disable_numparse=True))
    print(f"\n{int(table['images'].iloc[-1])} held-out abnormal images with boxes; pointing chance "
          f"{table['pointing_chance'].iloc[-1]:.3f}, energy chance {table['energy_chance'].iloc[-1]:.3f}; AUC over "
          f"{int(table['studies'].iloc[-1])} held-out studies")
    return 0


if __name__ == "__main__":
    sys.exit(main())
