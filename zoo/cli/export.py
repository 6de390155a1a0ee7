"""``bone-zoo export MEMBERS --onnx [--int8 ...]``: ONNX graphs beside each member's weights, for
``bone-zoo predict --backend onnx`` / ``onnx-int8`` (ONNX Runtime, no PyTorch at prediction time)."""

from __future__ import annotations

import argparse
import sys

import numpy as np


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bone-zoo export", description=__doc__)
    p.add_argument("members", nargs="+", help="member folders or run folders (every member inside)")
    p.add_argument("--onnx", action="store_true", required=True, help="write model.onnx beside model.safetensors")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (static int8, calibrated on "
                   "the member's validation images; needs --calibration-data)")
    p.add_argument("--calibration-data", default=None, metavar="DIR", help="the dataset the member was trained on; "
                   "its validation studies (val_predictions.csv) calibrate the int8 ranges")
    p.add_argument("--calibration-images", type=int, default=64, help="images used to calibrate (default "
                   "%(default)s)")
    return p


def main(args: argparse.Namespace) -> int:
    import pandas as pd

    from zoo.data import load_dataset, load_images
    from zoo.loader import load_model
    from zoo.members import MemberError, members_in
    from zoo.onnx import ONNX_FILES, export_onnx, quantize_int8

    if args.int8 and not args.calibration_data:
        print("error: --int8 needs --calibration-data DIR (the member's training data)", file=sys.stderr)
        return 2
    folders = [m for spec in args.members for m in members_in(spec)]
    if not folders:
        print(f"error: no member in {' '.join(args.members)}", file=sys.stderr)
        return 2
    for folder in folders:
        try:  # the one verified load: weights that are not config.json's are never exported
            model = load_model(folder)
        except MemberError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        path = export_onnx(model, folder / ONNX_FILES["onnx"])  # records the SHA-256 of the weights loaded
        print(f"wrote {path} (dynamic batch checked at 1 and 3 against PyTorch)")
        if args.int8:
            ds = load_dataset(args.calibration_data)
            ids = set(pd.read_csv(folder / "val_predictions.csv", dtype={"id": str})["id"])
            paths = ds.train[ds.train["id"].isin(ids)]["path"].tolist()[: args.calibration_images]
            if not paths:
                print(f"error: {args.calibration_data}: none of {folder.name}'s validation studies found",
                      file=sys.stderr)
                return 2
            arr = load_images(paths, model.img_size, quiet=True)
            rows = [i for i in range(len(paths)) if arr.ok[i]]
            batches = (np.asarray(arr.array[rows[i:i + 8]])[:, None] for i in range(0, len(rows), 8))
            path = quantize_int8(folder / ONNX_FILES["onnx"], folder / ONNX_FILES["onnx-int8"], batches)
            print(f"wrote {path} (calibrated on {len(rows)} validation images)")
    return 0
