"""How ``--boxes`` settings localise, scored on held-out images of the training split only (how the loss and its
defaults were chosen; the test split is left to ``bench/explain.py --boxes``). FracAtlas (../shared/data/fracatlas-hand;
CC BY 4.0, Abedeen et al. 2023), one member per setting, the modern recipe, no ImageNet weights:

  python bench/boxes_heldout.py --settings none signed:10:0 pointing:10:0 --img-size 384 --epochs 16

A setting is ``none`` (no boxes) or ``LOSS:WEIGHT:WARMUP``: ``signed`` is the loss ``train_all.py --boxes`` trains
(:class:`zoo.boxes.BoxLoss`: :func:`zoo.boxes.pointing_loss` plus :func:`zoo.boxes.sign_loss`); the references, each
trained through the ``BoxLoss.term`` seam (their member's config.json still names the shipped loss: read the
setting, not the config): ``pointing``, the soft pointing game alone (the loss before the sign term); ``energy``,
``1 - energy share`` of the min-max-normalised, upsampled Grad-CAM on the bare boxes (the first loss); ``both``, the
pointing game plus that energy term (tried, not kept). Every setting trains on the same split with the same seed, with
the boxes of the training split only (the member's own training images use them); the scores are on the member's
validation and calibration images (held out of its training; abnormal, with FracAtlas boxes): pointing game (Wilson
interval) and energy share (bootstrap interval) of the member at its best validation AUC ("kept", ``--keep best``)
and of the last epoch's weights (what ``--keep auto`` keeps with boxes); and the study AUC (DeLong interval) of both
on the calibration studies, which chose no epoch (the validation studies chose the best epoch; across a sweep they
chose the defaults that ship, so they are a development set, not an unbiased estimate: that is the test split's
job). Each row of OUT/heldout.csv names the loss, its sharpness and the commit that scored it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fracatlas-hand"
sys.path.insert(0, str(ROOT))


def energy_reference(BoxLoss):  # noqa: N803 (a class)
    """The loss before the soft pointing game: ``1 - energy share`` (:func:`zoo.localisation.energy_share`'s ratio, on
    the bare box mask) of the differentiable, min-max-normalised Grad-CAM resized to the input."""
    from zoo.boxes import shown

    class EnergyLoss(BoxLoss):
        def term(self, cam, mask):
            cam = shown(cam, mask.shape[-1])  # the map as shown and scored (masks are square, the model input)
            return 1 - (cam * mask).flatten(1).sum(1) / cam.flatten(1).sum(1).clamp_min(1e-6)

    return EnergyLoss


def combined_reference(BoxLoss):  # noqa: N803 (a class)
    """The soft pointing game plus ``1 - energy share`` of the shown map on the same mask (the hit region): the
    pointing game moves the peak into the box, the energy term then presses the rest of the map down."""
    from zoo.boxes import pointing_loss, shown

    class CombinedLoss(BoxLoss):
        def term(self, cam, mask):
            m = shown(cam, mask.shape[-1])
            energy = 1 - (m * mask).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1e-6)
            return pointing_loss(cam, mask) + energy * mask.flatten(1).amax(1)

    return CombinedLoss


def pointing_reference(BoxLoss):  # noqa: N803 (a class)
    """The soft pointing game alone (``grad-cam soft pointing game v2``, shipped before the sign term was added)."""
    from zoo.boxes import pointing_loss

    class PointingLoss(BoxLoss):
        def term(self, cam, mask):
            return pointing_loss(cam, mask)

    return PointingLoss


def strong_sign_reference(BoxLoss, factor: float = 4.0):  # noqa: N803 (a class)
    """The shipped loss with its sign term ``factor`` times as strong (tried for the energy share)."""
    from zoo.boxes import pointing_loss, sign_loss

    class StrongSignLoss(BoxLoss):
        def term(self, cam, mask):
            return pointing_loss(cam, mask) + factor * sign_loss(cam, mask)

    return StrongSignLoss


def grid_ceiling(boxes_file: Path, sizes: list[int], stride: int = 32) -> list[dict]:
    """The best pointing game any CAM can score at each input size: pytorch-grad-cam resizes the CAM layer's grid
    (``size / stride`` cells a side) bilinearly with half-pixel centres, so a map's first maximum lies next to a cell
    centre (:func:`zoo.boxes.peak_pixels`), and an image can be hit only if one of those points is within the
    tolerance of one of its boxes (stored pixels). Beside it, the energy share (and its ratio to chance, the boxes'
    share of the image) of the map the box loss asks for: 1 on its target cells (:func:`zoo.boxes.target_cells`),
    below 0 elsewhere, shown as pytorch-grad-cam shows it (:func:`zoo.boxes.shown`)."""
    import torch

    from zoo.boxes import peak_pixels, shown, target_cells
    from zoo.localisation import TOLERANCE, _distance_to_boxes, chance_levels, energy_share, hit_region, pad_geometry

    coco = json.loads(boxes_file.read_text())
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    images = [i for i in coco["images"] if i["id"] in by_image]
    rows = []
    for size in sizes:
        cells = math.ceil(size / stride)  # timm's CNNs: a partial last cell
        centres = np.unique(np.concatenate([t.numpy() for t in peak_pixels(cells, size)]))  # input pixels, a side
        hits, energy, chance = 0, [], []
        for img in images:
            geo = pad_geometry(img["height"], img["width"], size)
            boxes = np.asarray(by_image[img["id"]], float)
            xs, ys = geo.to_stored(centres[:, None], centres[None, :])
            hits += bool((_distance_to_boxes(xs, ys, boxes) <= TOLERANCE).any())
            targets = target_cells((cells, cells), torch.from_numpy(hit_region(boxes, geo))[None])
            shown_map = shown(torch.where(targets, 1.0, -1.0).reshape(1, cells, cells), size)[0].numpy()
            energy.append(energy_share(shown_map, boxes, geo))
            chance.append(chance_levels(boxes, img["height"], img["width"])[1])
        rows.append({"img_size": size, "grid": f"{cells}x{cells}", "best pointing game": hits / len(images),
                     "target map energy": float(np.nanmean(energy)),  # NaN: every cell a target, a flat map
                     "x chance": float(np.nanmean(energy) / np.mean(np.asarray(chance)[np.isfinite(energy)])),
                     "images": len(images)})
    return rows


def calibration_auc(model, trainer, size: int) -> dict:
    """The study AUC (DeLong interval) of ``model`` on the trainer's calibration studies, which chose nothing."""
    import torch
    from torch.utils.data import DataLoader

    from zoo.data import load_images
    from zoo.inference import ArrayDataset, predict_array
    from zoo.metrics import aggregate_studies
    from zoo.stats import auc_ci

    cal = trainer.cal_df[["id", "part", "label", "path"]].copy()
    images = load_images(cal["path"].tolist(), size, quiet=True)
    rows = images.index()
    loader = DataLoader(ArrayDataset(images, [rows[p] for p in cal["path"]], cal["label"].to_numpy()), batch_size=32)
    cal["prob"] = predict_array(model, loader, torch.device("cpu"))
    studies = aggregate_studies(cal, "prob")
    return auc_ci(studies["label"], studies["prob"])


def _commit() -> str:
    """The repository's commit (with ``+`` when the tree has changes): each row says which code scored it."""
    import subprocess

    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = "+" if git("status", "--porcelain", "--", "zoo") else ""
    return (git("rev-parse", "--short", "HEAD") or "unknown") + dirty


def run_setting(setting: str, args, data: Path, boxes_file: Path) -> dict:
    import pandas as pd

    import zoo.boxes
    from zoo.config import resolve
    from zoo.data import load_dataset, load_images
    from zoo.localisation import load_annotations, validation_localisation
    from zoo.model import BoneClassifier
    from zoo.train import Trainer

    parts = setting.split(":")
    loss, weight, warmup = parts[0], *(parts[1:] + ["1", "0"][len(parts) - 1:])[:2]  # LOSS[:WEIGHT[:WARMUP]]
    if setting == "none":
        weight = warmup = "0"
    if loss not in ("none", "signed", "pointing", "energy", "both", "signed4"):
        raise SystemExit(f"unknown setting {setting!r}: none or LOSS:WEIGHT:WARMUP, LOSS one of signed, pointing, "
                         "energy, both, signed4")
    production, masks = zoo.boxes.BoxLoss, zoo.boxes.box_masks
    if loss == "energy":  # the loss before, on the bare boxes it trained on (not the pointing game's hit region)
        zoo.boxes.BoxLoss = energy_reference(production)
        zoo.boxes.box_masks = lambda *a, tolerance=None, **k: masks(*a, **k)
    if loss == "both":  # pointing + energy, on the pointing game's hit region
        zoo.boxes.BoxLoss = combined_reference(production)
    if loss == "signed4":  # the sign term x4
        zoo.boxes.BoxLoss = strong_sign_reference(production)
    if loss == "pointing":  # the soft pointing game without the sign term
        zoo.boxes.BoxLoss = pointing_reference(production)
    out = Path(args.out) / f"{args.backbone}-{args.img_size}-s{args.seed}-{setting.replace(':', '_')}"
    given = {"img_size": args.img_size, "epochs": args.epochs, "seed": args.seed, "pretrained": False, "quiet": True,
             "export": False, "keep": "best",  # "kept": the best validation AUC's; "last" is read before export
             "boxes": None if loss == "none" else str(boxes_file)}
    if loss != "none":
        given |= {"box_weight": float(weight), "box_warmup": float(warmup)}
    trainer = Trainer(resolve("modern", given, backbone=args.backbone), load_dataset(data), out)
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
        zoo.boxes.BoxLoss, zoo.boxes.box_masks = production, masks
    train_s = time.perf_counter() - t0
    held = pd.concat([trainer.val_df, trainer.cal_df], ignore_index=True)
    paths, labels = held["path"].tolist(), held["label"].to_numpy()
    images = load_images(paths, args.img_size, quiet=True)
    rows = images.index()
    coco = load_annotations(data / "annotations.coco.json")
    names = {"none": "", "energy": "grad-cam energy share", "pointing": "grad-cam soft pointing game v2",
             "both": "grad-cam soft pointing game v2 + energy share",
             "signed4": "grad-cam soft pointing game v2 + 4 sign"}
    row = {"setting": setting, "loss": names.get(loss, zoo.boxes.BOX_LOSS),
           "sharpness": zoo.boxes.SHARPNESS if loss != "energy" and loss != "none" else "", "commit": _commit(),
           "backbone": args.backbone, "img_size": args.img_size, "epochs": args.epochs,
           "seed": args.seed, "best_epoch": json.loads((out / "metrics.json").read_text())["best_epoch"],
           "train_s": round(train_s)}
    for name, model in (("kept", BoneClassifier.load(out)), ("last", last["model"])):
        loc = validation_localisation(model, lambda i: images.read(np.array([rows[paths[j]] for j in i])), paths,
                                      labels, coco, root=data, limit=len(paths))
        auc = calibration_auc(model, trainer, args.img_size)
        row |= {"images": loc["images"], "pointing_chance": loc["pointing_chance"],
                "energy_chance": loc["energy_chance"], f"{name}_auc": auc["auc"], f"{name}_auc_lo": auc["lo"],
                f"{name}_auc_hi": auc["hi"], "studies": len(trainer.cal_df),
                **{f"{name}_{k}": loc[k] for k in ("pointing", "pointing_lo", "pointing_hi", "energy", "energy_lo",
                                                   "energy_hi")}}
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA), help="dataset folder with annotations.coco.json (default %(default)s)")
    p.add_argument("--settings", nargs="+", default=["none", "signed:10:0", "pointing:10:0"])
    p.add_argument("--backbone", default="resnet10t")
    p.add_argument("--img-size", type=int, default=384)
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "boxes_heldout"))
    p.add_argument("--ceiling", type=int, nargs="+", metavar="PX", help="only print the best pointing game a "
                   "stride-32 CAM grid allows at these sizes, and the energy share of the map the box loss asks for "
                   "(on the training split's boxes), and stop")
    args = p.parse_args()
    import pandas as pd
    from explain import data_and_out, train_split_boxes  # bench/explain.py: the training split's boxes only

    from zoo.stats import interval

    if (folders := data_and_out(args)) is None:
        return 0
    data, out = folders
    boxes_file = train_split_boxes(data, out)
    if args.ceiling:
        print(pd.DataFrame(grid_ceiling(boxes_file, args.ceiling)).to_markdown(index=False, floatfmt=".3f"))
        return 0
    csv = out / "heldout.csv"
    for setting in args.settings:
        r = run_setting(setting, args, data, boxes_file)
        print(f"{setting}: pointing kept {r['kept_pointing']:.3f}, last {r['last_pointing']:.3f}; calibration AUC "
              f"kept {r['kept_auc']:.3f}, last {r['last_auc']:.3f}", file=sys.stderr)
        table = pd.DataFrame([r])  # each setting's row lands as soon as it is scored: a stopped sweep keeps its rows
        if csv.is_file():
            table = pd.concat([pd.read_csv(csv), table], ignore_index=True)
        table.to_csv(csv, index=False)
    if not csv.is_file():
        return 0
    table = pd.read_csv(csv)
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
        "calibration AUC, kept": [f"{r.kept_auc:.3f} ({interval(r.kept_auc_lo, r.kept_auc_hi)})"
                                  for r in table.itertuples()],
        "calibration AUC, last": [f"{r.last_auc:.3f} ({interval(r.last_auc_lo, r.last_auc_hi)})"
                                  for r in table.itertuples()]})
    print(show.to_markdown(index=False, disable_numparse=True))
    print(f"\n{int(table['images'].iloc[-1])} held-out abnormal images with boxes; pointing chance "
          f"{table['pointing_chance'].iloc[-1]:.3f}, energy chance {table['energy_chance'].iloc[-1]:.3f}; AUC over "
          f"{int(table['studies'].iloc[-1])} calibration studies")
    return 0


if __name__ == "__main__":
    sys.exit(main())
