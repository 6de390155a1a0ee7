"""Do the zoo's heatmaps point at the fracture? FracAtlas' own boxes against every CAM method, member and the fused
ensemble CAM; ROAD faithfulness; the ensemble-vs-best-member DeLong test. CPU-sized defaults:

  python bench/explain.py --models regnetx_002 resnet10t --img-size 128 --epochs 4

Trains a small zoo with train_all.py (or reuses --run), then runs
``bone-zoo evaluate RUN --data DIR --annotations DIR/annotations.coco.json --strata DIR/metadata.csv`` into
bench/out/explain/ (git-ignored) and prints the localisation table and the paired tests as markdown.

``--boxes``: the with/without comparison of issue #24. For each ``--seeds`` seed the same zoo and budget is trained
twice, without and with ``train_all.py --boxes`` (the boxes of the training split only, written to
OUT/train_boxes.coco.json), and both runs are scored on the test split against all the boxes: pointing game (Wilson
interval) and energy share (bootstrap interval) of the fused Grad-CAM and of each member, beside chance, and the
ensemble's study AUC (DeLong interval) with the paired DeLong difference with boxes - without. The full run (384 px:
the CAM grid must resolve FracAtlas' boxes, ``bench/boxes_heldout.py --ceiling``; ~2 h on 2 CPU cores):

  python bench/explain.py --boxes --models regnetx_002 resnet10t --img-size 384 --epochs 16 --seeds 0 1 2

With ``--boxes``, a run already in ``--out`` is reused as it was scored (the table gives each arm's epochs);
``--rescore`` scores it again with the code as it is now. ``zoo evaluate`` chooses each arm's combiner and inference
graph by itself (``auto``: by cross-validation on the validation predictions, and int8 where it passed its check), so
the two arms of a seed may be scored by different combiners or precisions; ``--backend torch --ensemble mean`` scores
both the same way, into OUT/seedS-*/report-torch-mean/ and OUT/boxes_comparison-torch-mean.csv, beside the shipped
scoring (a trained run is scored, not retrained; with ``--rescore`` only the report of that way is scored again, and a
report older than the run's shipped one is scored again without it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fracatlas-hand"


def main() -> int:
    from zoo.combiners import list_combiners
    from zoo.ensemble import BACKENDS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA), help="dataset folder with annotations.coco.json (default %(default)s)")
    p.add_argument("--models", nargs="+", default=["regnetx_002", "resnet10t"])
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--run", default=None, help="an existing run folder to evaluate instead of training one")
    p.add_argument("--road-samples", type=int, default=16)
    p.add_argument("--loc-methods", nargs="+", default=None, help="CAM methods (default: all)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "explain"))
    p.add_argument("--boxes", action="store_true", help="compare the zoo trained without and with --boxes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="with --boxes (default %(default)s)")
    p.add_argument("--budget-minutes", type=float, default=None, help="with --boxes: the same budget for both arms "
                   "instead of --epochs (the boxes arm then plans for its extra cost)")
    p.add_argument("--rescore", action="store_true", help="with --boxes: score runs already trained in --out again "
                   "(after a change to how maps are made or scored; nothing is retrained)")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="with --boxes: zoo evaluate's --backend for both arms (default: its own, auto)")
    p.add_argument("--ensemble", choices=list_combiners(), default=None,
                   help="with --boxes: zoo evaluate's --ensemble (the combiner) for both arms (default: its own, auto)")
    p.add_argument("--train-args", nargs=argparse.REMAINDER, default=[], help="more train_all.py flags, last")
    args = p.parse_args()
    if args.rescore and not args.boxes:
        p.error("--rescore is for --boxes (without it, --run RUN scores a trained run without training)")
    if (args.backend or args.ensemble) and not args.boxes:
        p.error("--backend and --ensemble are for --boxes")
    if (folders := data_and_out(args)) is None:
        return 0
    data, out = folders
    if args.boxes:
        return compare_boxes(args, data, out)
    run = Path(args.run) if args.run else out / "weights"
    if not args.run:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "train_all.py"), "--data", str(data), "--models", *args.models,
                        "--img-size", str(args.img_size), "--epochs", str(args.epochs), "--out", str(run), "--quiet"],
                       check=True)
        print(f"train_all: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    report = out / "report"
    cmd = [sys.executable, "-m", "zoo", "evaluate", str(run), "--data", str(data), "--report-dir", str(report),
           "--annotations", str(data / "annotations.coco.json"), "--road-samples", str(args.road_samples), "--quiet"]
    if (data / "metadata.csv").is_file():
        cmd += ["--strata", str(data / "metadata.csv")]
    if args.loc_methods:
        cmd += ["--loc-methods", *args.loc_methods]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"evaluate: {time.perf_counter() - t0:.0f}s", file=sys.stderr)

    import pandas as pd

    loc = pd.read_csv(report / "localisation.csv")
    cols = ["member", "method", "images", "pointing", "pointing_lo", "pointing_hi", "pointing_chance", "energy",
            "energy_lo", "energy_hi", "energy_chance", "road", "road_lo", "road_hi", "road_random", "road_images"]
    print(loc[cols].to_markdown(index=False, floatfmt=".3f"))
    board = pd.read_csv(run / "leaderboard.csv")
    column = "member" if "member" in board else "backbone"  # a pre-#20 leaderboard named members "backbone"
    best = board.sort_values("val_auc", ascending=False)[column].iloc[0]  # chosen on validation, not on test
    text = (report / "report.md").read_text()
    print(f"\nbest member by validation AUC: {best}")
    for line in text.splitlines():
        if line.startswith("- the ensemble's AUC"):
            print(line)
    return 0


def train_split_boxes(data: Path, out: Path) -> Path:
    """The dataset's COCO file cut to its training images (the boxes arm never sees a test box)."""
    from zoo.atomic import write_text
    from zoo.data import load_dataset

    train = {Path(x).resolve().relative_to(data.resolve()).as_posix() for x in load_dataset(data).train["path"]}
    coco = json.loads((data / "annotations.coco.json").read_text())
    images = [i for i in coco["images"] if i["file_name"].replace("\\", "/") in train]
    ids = {i["id"] for i in images}
    coco = {**coco, "images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}
    path = out / "train_boxes.coco.json"
    write_text(path, json.dumps(coco))
    print(f"train-split boxes: {len(coco['annotations'])} boxes on {len({a['image_id'] for a in coco['annotations']})} "
          f"of {len(images)} training images -> {path}", file=sys.stderr)
    return path


def data_and_out(args) -> tuple[Path, Path] | None:
    """``(--data, --out)`` with the output folder made, or None (said) when the data has no FracAtlas boxes: the
    bench skips cleanly where the dataset is absent."""
    data = Path(args.data)
    if not (data / "annotations.coco.json").is_file():
        print(f"skip: {data / 'annotations.coco.json'} not present")
        return None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return data, out


def train_and_score(args, data: Path, run: Path, seed: int, boxes: Path | None) -> None:
    """train_all.py (the same zoo, seed and budget; ``--boxes`` for the boxes arm), then :func:`score`."""
    size = ["--budget-minutes", str(args.budget_minutes)] if args.budget_minutes else ["--epochs", str(args.epochs)]
    cmd = [sys.executable, str(ROOT / "train_all.py"), "--data", str(data), "--models", *args.models, "--img-size",
           str(args.img_size), *size, "--seed", str(seed), "--out", str(run), "--quiet", *args.train_args]
    t0 = time.perf_counter()
    subprocess.run(cmd + (["--boxes", str(boxes)] if boxes else []), check=True)
    print(f"{run.name}: train_all {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    score(args, data, run, shipped=True)


def scoring(args) -> str:
    """The name of the way both arms are scored: ``""`` for ``zoo evaluate``'s own choices, else e.g.
    ``"-torch-mean"`` (``--backend torch --ensemble mean``), the suffix of its report folder and table."""
    if not (args.backend or args.ensemble):
        return ""
    return f"-{args.backend or 'auto'}-{args.ensemble or 'auto'}"


def report_dir(args, run: Path, shipped: bool = False) -> Path:
    """Where a run's scores go: RUN/report for ``zoo evaluate``'s own choices (``shipped``: what marks a run trained
    and scored), else RUN/report{:func:`scoring`}."""
    return run / ("report" if shipped else f"report{scoring(args)}")


def score(args, data: Path, run: Path, shipped: bool = False) -> None:
    """``zoo evaluate`` of a trained run on the test split: Grad-CAM against every test box, no ROAD; into RUN/report
    with zoo evaluate's own choices when ``shipped`` (what marks a run trained and scored), else as ``--backend`` and
    ``--ensemble`` say (:func:`scoring`)."""
    fixed = [] if shipped else [f for flag, value in (("--backend", args.backend), ("--ensemble", args.ensemble))
                                if value for f in (flag, value)]
    subprocess.run([sys.executable, "-m", "zoo", "evaluate", str(run), "--data", str(data), "--report-dir",
                    str(report_dir(args, run, shipped)), "--annotations",
                    str(data / "annotations.coco.json"), "--road-samples", "0", "--loc-methods",
                    *(args.loc_methods or ["gradcam"]), *fixed, "--quiet"], check=True, cwd=ROOT)


def _scores(report: Path, labels) -> tuple:
    """(localisation summary rows, study predictions merged with the test labels) of a run's report folder."""
    import pandas as pd

    loc = pd.read_csv(report / "localisation.csv")
    pred = pd.read_csv(report / "predictions.csv").rename(columns={"label": "prob"})
    return loc, pred.merge(labels, on="id")


def _epochs(run: Path) -> str:
    """The epochs a (possibly reused) run trained, from its members' metrics.json: ``"32"``, or ``"32, 48"`` where
    they differ, ``"?"`` where none says (so a table that mixes budgets shows it)."""
    runs = sorted({json.loads(f.read_text()).get("epochs_run") for f in run.glob("*/metrics.json")} - {None})
    return ", ".join(map(str, runs)) or "?"


def run_folder(out: Path, seed: int, boxed: bool) -> Path:
    """One arm's train_all.py output folder: ``OUT/seedS-boxes`` or ``OUT/seedS-plain``."""
    return out / f"seed{seed}-{'boxes' if boxed else 'plain'}"


def compare_boxes(args, data: Path, out: Path) -> int:
    """Both arms for every seed, then one table (a row per seed, arm and map) and the paired AUC differences."""
    import pandas as pd

    from zoo.localisation import FUSED
    from zoo.stats import auc_ci, delong_test, describe_difference, interval

    runs = [run_folder(out, seed, boxed) for seed in args.seeds for boxed in (False, True)]
    missing = [r for r in runs if not (report_dir(args, r, shipped=True) / "localisation.csv").is_file()]
    if args.rescore and missing:
        print(f"--rescore scores runs already trained and scored; not there: {', '.join(map(str, missing))} (run "
              "without --rescore to train them)", file=sys.stderr)
        return 2
    boxes = train_split_boxes(data, out)
    labels = pd.read_csv(data / "test_labels.csv")[["id", "label"]]
    rows, diffs = [], []
    for seed in args.seeds:
        preds = {}
        for arm, file in (("without", None), ("with boxes", boxes)):
            run = run_folder(out, seed, file is not None)
            shipped, report = (report_dir(args, run, shipped=s) / "localisation.csv" for s in (True, False))
            if not shipped.is_file():
                train_and_score(args, data, run, seed, file)
            # a report scored another way before the run was (re)trained or rescored is stale
            if args.rescore or not report.is_file() or report.stat().st_mtime < shipped.stat().st_mtime:
                score(args, data, run)
            loc, preds[arm] = _scores(report.parent, labels)
            a = auc_ci(preds[arm]["label"], preds[arm]["prob"])
            epochs = _epochs(run)
            for _, r in loc.iterrows():
                rows.append({"seed": seed, "arm": arm, "epochs": epochs, "map": r["member"], "images": r["images"],
                             "pointing": f"{r['pointing']:.3f} {interval(r['pointing_lo'], r['pointing_hi'])}",
                             "pointing chance": f"{r['pointing_chance']:.3f}",
                             "energy": f"{r['energy']:.3f} {interval(r['energy_lo'], r['energy_hi'])}",
                             "energy / chance": f"{r['energy'] / r['energy_chance']:.1f}",
                             "study AUC": f"{a['auc']:.3f} {interval(a['lo'], a['hi'])}" if r["member"] == FUSED
                             else "", "_pointing": r["pointing"], "_energy": r["energy"], "_auc": a["auc"]})
        m = preds["with boxes"].merge(preds["without"], on=["id", "label"], suffixes=("_b", "_p"))
        t = delong_test(m["label"], m["prob_b"], m["prob_p"])
        diffs.append(f"- seed {seed}: " + describe_difference("the zoo with boxes", "the zoo without", t))
    table = pd.DataFrame(rows)
    write = table.drop(columns=[c for c in table if c.startswith("_")])
    if scoring(args):
        print(f"scored with zoo evaluate --backend {args.backend or 'auto'} --ensemble {args.ensemble or 'auto'}")
    print(write.to_markdown(index=False, disable_numparse=True))
    fused = table[table["map"] == FUSED].groupby("arm", sort=False)[["_pointing", "_energy", "_auc"]].agg(
        ["mean", "std"])
    fused.columns = [f"{c.strip('_')} {s}" for c, s in fused.columns]
    print("\nfused map and ensemble AUC over seeds (mean, sd):\n" + fused.to_markdown(floatfmt=".3f"))
    print("\npaired DeLong, ensemble AUC with boxes - without, test studies:\n" + "\n".join(diffs))
    table.to_csv(out / f"boxes_comparison{scoring(args)}.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
