"""``bone-zoo export MEMBERS --onnx [--int8 ...]``: ONNX graphs beside each member's weights, for members trained
before training exported them itself (or with ``--no-export``). The same export as training's (zoo.onnx.export_member):
``--int8`` calibrates and checks the int8 graph on the member's own validation images, found in the dataset it was
trained on (``--calibration-data``), and records the check in config.json and the card. With those images the
graphs ``--backend auto`` runs also score the validation and calibration studies (zoo.graph_scores), so a triage
on that backend is certified on its own scores."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from zoo.onnx import CALIBRATION_IMAGES


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bone-zoo export", description=__doc__)
    p.add_argument("members", nargs="+", help="member folders or run folders (every member inside)")
    p.add_argument("--onnx", action="store_true", required=True, help="write model.onnx beside model.safetensors")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (static int8, calibrated and "
                   "checked against the fp32 torch path on the member's validation images; needs --calibration-data)")
    p.add_argument("--calibration-data", default=None, metavar="DIR", help="the dataset the member was trained on; "
                   "its validation studies (val_predictions.csv) calibrate and check the int8 graph")
    p.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES, help="validation images that "
                   "calibrate the int8 ranges; all of them check it (default %(default)s)")
    return p


def validation_images(folder, data: str, size: int, file: str = "val_predictions.csv"):
    """The member's validation images (uint8 ``(n, S, S)``) and their rows (id, part, label) from the dataset
    ``data``; with ``file`` another of its prediction files' studies (its calibration split:
    calibration_predictions.csv). None when none of those studies are in it."""
    import pandas as pd

    from zoo.data import load_dataset, load_images

    ds = load_dataset(data)
    ids = set(pd.read_csv(folder / file, dtype={"id": str})["id"])
    frame = ds.train[ds.train["id"].isin(ids)].reset_index(drop=True)
    if frame.empty:
        return None
    arr = load_images(frame["path"].tolist(), size, quiet=True)
    rows = np.flatnonzero(arr.ok)
    return np.asarray(arr.array[rows]), frame.iloc[rows].reset_index(drop=True)


def main(args: argparse.Namespace) -> int:
    from zoo.graph_scores import describe_scores, store
    from zoo.members import MemberError, members_in, read_member_config
    from zoo.onnx import describe_export, export_member, export_record

    if args.int8 and not args.calibration_data:
        print("error: --int8 needs --calibration-data DIR (the member's training data)", file=sys.stderr)
        return 2
    folders = [m for spec in args.members for m in members_in(spec)]
    if not folders:
        print(f"error: no member in {' '.join(args.members)}", file=sys.stderr)
        return 2
    for folder in folders:
        images, frame = np.zeros((0, 1, 1), np.uint8), None
        try:
            if args.int8:
                if not (folder / "val_predictions.csv").is_file():
                    raise MemberError(f"{folder}: no val_predictions.csv, so its validation studies are unknown; "
                                      "export it without --int8")
                found = validation_images(folder, args.calibration_data, int(read_member_config(folder)["img_size"]))
                if found is None:
                    raise MemberError(f"{args.calibration_data}: none of {folder.name}'s validation studies found")
                images, frame = found
            # the one verified load inside: weights that are not config.json's are never exported
            record = export_member(folder, images, frame, int8=args.int8, calibration_images=args.calibration_images)
            scores = store(folder, {"val": (images, frame), **_calibration_split(folder, args.calibration_data)})
        except MemberError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        record = export_record(folder) or record  # with the other runtimes' int8 checks (store)
        print(f"{folder}: wrote {describe_export(record)}; dynamic batch checked at 1 and 3 against PyTorch; "
              f"{describe_scores(scores)}")
    return 0


def _calibration_split(folder, data: str | None) -> dict:
    """``{"calibration": (images, rows)}`` of the member's held-out calibration split in ``data`` when it has one
    (calibration_predictions.csv) and ``data`` is given, else {}."""
    from zoo.members import read_member_config

    if not data or not (folder / "calibration_predictions.csv").is_file():
        return {}
    found = validation_images(folder, data, int(read_member_config(folder)["img_size"]), "calibration_predictions.csv")
    return {"calibration": found} if found is not None else {}
