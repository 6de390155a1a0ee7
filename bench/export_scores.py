"""What storing the graphs' own validation/calibration scores (zoo.graph_scores.store) adds to a member's export.

  python bench/export_scores.py --member RUN/resnet10t --data DIR      # a trained member and its training data
  python bench/export_scores.py --untrained regnet_x_800mf --img-size 512 --data ../shared/data/fracatlas-hand \
      --val-studies 64 --cal-studies 64                                 # speed only: random weights, real images

Works on a copy of the member (the original is not touched). Per repeat it times, in this process and after one
untimed warm-up of each step: the export as training runs it (``zoo.onnx.export_member``: fp32 graph, int8
quantisation and their checks on the validation images) and then ``store`` on every installed runtime, and ``store``
with ONNX Runtime alone. ``--untrained`` builds a member with random weights whose validation and calibration
splits are the first studies of ``--data``'s training split, its torch predictions computed here (untimed).
Prints one markdown row per case (median wall and process CPU seconds of ``--repeats``); the numbers go to
bench/README.md by hand.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock


def _untrained(folder: Path, backbone: str, size: int, data: str, n_val: int, n_cal: int) -> None:
    """A member with random weights at ``size`` px, its val/calibration prediction files written by the torch path."""
    from zoo.atomic import write_csv
    from zoo.data import load_dataset
    from zoo.ensemble import Ensemble, Member
    from zoo.model import BoneClassifier

    BoneClassifier.new(backbone, pretrained=False, img_size=size).save_member(folder)
    train = load_dataset(data).train
    train = train[train["label"].notna()]
    ids = list(dict.fromkeys(train["id"]))
    ens = Ensemble([Member(folder.name, folder)], backend="torch", precision="fp32")
    for file, chosen in (("val_predictions.csv", ids[:n_val]), ("calibration_predictions.csv",
                                                               ids[n_val:n_val + n_cal])):
        st = ens.predict_studies(train[train["id"].isin(chosen)], cache_dir="", quiet=True)
        write_csv(st[["id", "part", "label", folder.name]].rename(columns={folder.name: "prob"}), folder / file)


def _time(fn) -> tuple[float, float]:
    """(wall s, CPU s of this process, every thread) of ``fn()``: on a shared machine the CPU time is the steadier."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--member", default=None, help="a trained member folder (copied, not modified)")
    p.add_argument("--untrained", default=None, metavar="BACKBONE", help="instead: a random-weights member")
    p.add_argument("--img-size", type=int, default=512, help="with --untrained (default %(default)s)")
    p.add_argument("--val-studies", type=int, default=64, help="with --untrained (default %(default)s)")
    p.add_argument("--cal-studies", type=int, default=64, help="with --untrained (default %(default)s)")
    p.add_argument("--data", required=True, help="the member's training data (its val/calibration images)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if bool(args.member) == bool(args.untrained):
        p.error("give one of --member or --untrained")

    from zoo.backends import installed_runtimes
    from zoo.cli.export import _calibration_split, validation_images
    from zoo.graph_scores import store
    from zoo.members import read_member_config
    from zoo.onnx import export_member

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / (Path(args.member).name if args.member else args.untrained)
        if args.member:
            shutil.copytree(args.member, folder)
        else:
            _untrained(folder, args.untrained, args.img_size, args.data, args.val_studies, args.cal_studies)
        size = int(read_member_config(folder)["img_size"])
        val = validation_images(folder, args.data, size)
        splits = {"val": val, **_calibration_split(folder, args.data)}
        n = {k: len(v[0]) for k, v in splits.items()}
        runtimes = installed_runtimes()
        cases = {
            "export_member (fp32 + int8 + checks)": lambda: export_member(folder, *val),
            f"store, {' + '.join(runtimes)}": lambda: store(folder, splits),
            "store, onnx alone": lambda: _ort_only(store, folder, splits),
        }
        times = {k: [] for k in cases}
        for fn in cases.values():  # warm-up (first session builds, OpenVINO's first compile)
            fn()
        for _ in range(args.repeats):
            for k, fn in cases.items():
                times[k].append(_time(fn))
    cfg = read_member_config(args.member) if args.member else {"backbone": args.untrained, "img_size": args.img_size}
    print(f"machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs; member "
          f"{cfg['backbone']} at {cfg['img_size']} px; images: " + ", ".join(f"{k} {v}" for k, v in n.items()))
    print("| step | median wall s | median CPU s | runs (wall / CPU) |\n|---|---|---|---|")
    for k, ts in times.items():
        wall, cpu = statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)
        print(f"| {k} | {wall:.2f} | {cpu:.2f} | {', '.join(f'{w:.2f} / {c:.2f}' for w, c in ts)} |")
    return 0


def _ort_only(store, folder, splits):
    with mock.patch("zoo.backends.installed_runtimes", lambda: ["onnx"]):
        return store(folder, splits)


if __name__ == "__main__":
    raise SystemExit(main())
