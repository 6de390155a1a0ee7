"""Speed on CPU (or GPU), side by side in one run: the original tool's loops vs bone-zoo's paths.

  python bench/speed.py                                   # 447 FracAtlas images at 512 px, regnet_x_800mf
  python bench/speed.py --n-images 100 --train-images 64  # quicker

Each case runs in its own child process; the parent measures its wall time, user/sys CPU and peak RSS (os.wait4),
so every number is a whole process, imports included. Baselines are this repository's re-implementation of the
original project's loops (from its description): inference at batch 1 in fp32 under torch.no_grad, decoding and
padding each image; training at batch 32 in fp32 with a single-process loader that decodes every image every epoch.
bone-zoo's cases call predict.py's and train_all.py's own main(). The model is an untrained member (speed does not
depend on the weights). Writes bench/out/speed/speed.csv and prints a markdown table with ratios to the baselines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fracatlas-hand"
MEAN, STD = 0.449, 0.226


# -- the original tool's loops (re-implemented here from its description) --------------------------------------------
def _decode_pad(path: str, size: int):
    """PIL decode -> grayscale -> pad to a square -> resize: what the original did per image."""
    import numpy as np
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = True  # FracAtlas has truncated JPEGs; the original had to read them this way
    img = Image.open(path).convert("L")
    side = max(img.size)
    canvas = Image.new("L", (side, side))
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return np.asarray(canvas.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


def baseline_inference(a: dict) -> dict:
    import torch

    from zoo.model import BoneClassifier

    model = BoneClassifier.load(a["member"]).eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for p in a["paths"]:
            x = (torch.from_numpy(_decode_pad(p, a["size"])) - MEAN) / STD
            torch.sigmoid(model(x[None, None]))
    return {"images": len(a["paths"]), "loop_s": time.perf_counter() - t0}


def baseline_training(a: dict) -> dict:
    import torch
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2

    from zoo.model import BoneClassifier

    aug = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomAffine(degrees=30, translate=(0.1, 0.1))])

    class Decoding(Dataset):  # decodes every image every epoch, in the training process
        def __len__(self):
            return len(a["paths"])

        def __getitem__(self, i):
            x = aug(torch.from_numpy(_decode_pad(a["paths"][i], a["size"]))[None])
            return (x - MEAN) / STD, float(a["labels"][i])

    torch.manual_seed(0)
    model = BoneClassifier(a["backbone"], img_size=a["size"]).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(3.0))
    loader = DataLoader(Decoding(), batch_size=32, shuffle=True, num_workers=0, drop_last=True)
    t0, n = time.perf_counter(), 0
    for x, y in loader:
        loss = loss_fn(model(x), y.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(y)
    return {"images": n, "loop_s": time.perf_counter() - t0}


# -- bone-zoo's paths -------------------------------------------------------------------------------------------------
def zoo_predict(a: dict) -> dict:
    import predict

    t0 = time.perf_counter()
    rc = predict.main(predict.get_args_parser().parse_args(a["argv"]))
    return {"images": a["n"], "loop_s": time.perf_counter() - t0, "rc": rc}


def zoo_train(a: dict) -> dict:
    import pandas as pd

    import train_all

    rc = train_all.main(train_all.get_args_parser().parse_args(a["argv"]))
    member = Path(a["out"]) / a["backbone"]
    log = pd.read_json(member / "metrics.jsonl", lines=True)
    n = json.loads((member / "config.json").read_text())["training"]["n_train_images"]
    return {"images": n, "loop_s": float(log["train_s"].iloc[-1]), "rc": rc}


def graph_accuracy(a: dict) -> dict:
    """Study AUC on the dataset's test split of one trained member through each backend (the fp32 torch path is
    the reference), and the largest change of a study's raw score against it."""
    from zoo.data import load_dataset, studies
    from zoo.ensemble import Ensemble
    from zoo.metrics import binary_metrics

    test = load_dataset(a["data"]).test
    truth = studies(test).set_index("id")["label"]
    out, ref = {}, None
    for backend, precision in [("torch", "fp32"), ("torch", "auto"), ("onnx", "fp32"), ("onnx-int8", "fp32"),
                               ("openvino", "fp32"), ("openvino-int8", "fp32")]:
        ens = Ensemble.from_paths([a["member"]], backend=backend, precision=precision)
        st = ens.predict_studies(test, cache_dir="", quiet=True)
        score = st.set_index("id")["ensemble"]
        ref = score if ref is None else ref
        name = backend if backend != "torch" else f"torch {precision}"
        out[name] = {"auc": binary_metrics(truth[score.index].to_numpy(), score.to_numpy())["auc"],
                     "max_change": float((score - ref).abs().max())}
    return {"images": len(test), "loop_s": 0.0, "accuracy": out}


CASES = {"baseline_inference": baseline_inference, "baseline_training": baseline_training,
         "zoo_predict": zoo_predict, "zoo_train": zoo_train, "graph_accuracy": graph_accuracy}


def compare_graph_runtimes(args, pred: list[str], n: int, out_dir: Path) -> list[dict]:
    """ONNX Runtime against OpenVINO on the same exported graphs (fp32, int8) and predict.py's default (auto),
    whole process, cold cache; the cases interleaved and repeated ``--repeats`` times in this one invocation, so
    a shared machine's load falls on all of them alike. Each row: one run, with the machine's load average."""
    cases = [("onnx", "predict.py --backend onnx (ORT fp32)"), ("openvino", "predict.py --backend openvino (OV fp32 "
             "graph, bf16 hint)"), ("onnx-int8", "predict.py --backend onnx-int8 (ORT int8)"),
             ("openvino-int8", "predict.py --backend openvino-int8 (OV int8)"), ("auto", "predict.py (defaults: auto)")]
    rows = []
    for r in range(args.repeats):
        for backend, name in cases:
            res = child("zoo_predict", {"argv": [*pred, "--cache-dir", "", "--backend", backend], "n": n}, out_dir)
            rows.append({"case": name, "group": "graphs", "round": r, **res, "images_per_s": res["images"] /
                         res["wall_s"], "load_1min": os.getloadavg()[0]})
            print(f"round {r} {name}: {rows[-1]['images_per_s']:.2f} img/s (load {rows[-1]['load_1min']:.1f})",
                  flush=True)
    return rows


def child(kind: str, args: dict, log_dir: Path, script: Path = Path(__file__)) -> dict:
    """Run one case in a fresh interpreter (``script --_case KIND``: this bench's, or another's that dispatches its
    own cases); its wall, CPU times and peak RSS (its stderr goes to log_dir)."""
    cmd = [sys.executable, str(script), "--_case", kind, "--_args", json.dumps(args)]
    t0 = time.perf_counter()
    log = open(log_dir / f"{kind}.stderr", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = proc.stdout.read()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    log.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} failed (exit {proc.returncode}); see {log.name}")
    res = json.loads(lines[-1])
    return {**res, "wall_s": wall, "user_s": ru.ru_utime, "sys_s": ru.ru_stime, "peak_rss_gb": ru.ru_maxrss / 2**20}


def case_or_skip(args, cases: dict) -> int | None:
    """In a child (``--_case``): run that case, print its JSON result and return 0; in the parent: 0 with a ``skip``
    line where ``--data`` is absent; else None (go on)."""
    if args._case:
        print(json.dumps(cases[args._case](json.loads(args._args))))
        return 0
    if not Path(args.data).is_dir():
        print(f"skip: {args.data} not present")
        return 0
    return None


def prepare(args) -> tuple[Path, list[str], list[str], dict]:
    """A competition-layout folder of links to the chosen images, and an untrained member."""
    import pandas as pd

    from zoo.model import BoneClassifier

    src = Path(args.data)
    out = Path(args.out)
    data = out / "data"
    labels = pd.read_csv(src / "train.csv", dtype={"id": str}).dropna()
    labels["label"] = labels["label"].astype(int)
    test = sorted((src / "test").iterdir())  # topped up from train/ to --n-images (the test split has 217)
    test = (test + sorted((src / "train").iterdir()))[: args.n_images]
    train = [src / "train" / f"{i}_image1.jpg" for i in labels["id"]][: args.train_images]
    for split, files in (("test", test), ("train", train)):
        (data / split).mkdir(parents=True, exist_ok=True)
        for f in files:
            link = data / split / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    labels[labels["id"].isin([f.name.rsplit("_", 1)[0] for f in train])].to_csv(data / "train.csv", index=False)
    member = out / "member" / args.backbone
    if not (member / "model.safetensors").is_file():
        BoneClassifier(args.backbone, img_size=args.size).save_member(member)
    # the untrained member has no validation split: name 32 training studies as one, to calibrate its int8 graph
    calib = labels[labels["id"].isin([f.name.rsplit("_", 1)[0] for f in train])].head(32)
    calib.assign(prob=0.5).to_csv(member / "val_predictions.csv", index=False)
    label_of = dict(zip(labels["id"], labels["label"]))
    return data, [str(p) for p in test], [str(p) for p in train], label_of


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA), help="competition-layout folder with train/, test/, train.csv")
    p.add_argument("--n-images", type=int, default=447, help="images to predict (default %(default)s)")
    p.add_argument("--train-images", type=int, default=128, help="images in the training epoch (default %(default)s)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--backbone", default="regnet_x_800mf")
    p.add_argument("--cases", nargs="+", default=["inference", "training", "onnx", "graphs", "accuracy"],
                   help="which groups to run: inference, training, onnx, graphs (ONNX Runtime against OpenVINO, "
                   "interleaved), accuracy (study AUC of --accuracy-member per backend) (default: all)")
    p.add_argument("--repeats", type=int, default=2, help="rounds of the interleaved graph runtime comparison "
                   "(default %(default)s)")
    p.add_argument("--accuracy-member", default=None, metavar="DIR", help="a member trained on --data (exported "
                   "by training) for the accuracy group; default: train resnet10t at 128 px for 2 epochs into OUT")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "speed"))
    p.add_argument("--_case", help=argparse.SUPPRESS)
    p.add_argument("--_args", help=argparse.SUPPRESS)
    args = p.parse_args()
    if (done := case_or_skip(args, CASES)) is not None:
        return done
    import pandas as pd

    from zoo.runtime import machine_summary

    data, test, train, label_of = prepare(args)
    out_dir = Path(args.out)
    member = str(Path(args.out) / "member" / args.backbone)
    rows = []

    def record(name, group, kind, a, note=""):
        r = child(kind, a, out_dir)
        rows.append({"case": name, "group": group, **r, "images_per_s": r["images"] / (
            r["wall_s"] if group == "inference" else r["loop_s"]), "note": note})
        print(f"{name}: {rows[-1]['images_per_s']:.2f} img/s, wall {r['wall_s']:.1f}s, user {r['user_s']:.0f}s, "
              f"sys {r['sys_s']:.0f}s, peak {r['peak_rss_gb']:.2f} GB", flush=True)

    pred = ["--data", str(data), "--models", member, "--quiet", "-output", str(Path(args.out) / "p.csv")]
    if "inference" in args.cases:
        record("original loop (batch 1, fp32)", "inference", "baseline_inference",
               {"member": member, "paths": test, "size": args.size})
        record("predict.py (defaults), cold cache", "inference", "zoo_predict",
               {"argv": [*pred, "--cache-dir", ""], "n": len(test)})
        warm = str(Path(args.out) / "cache")
        child("zoo_predict", {"argv": [*pred, "--cache-dir", warm], "n": len(test)}, out_dir)  # fills the cache
        record("predict.py (defaults), warm cache", "inference", "zoo_predict",
               {"argv": [*pred, "--cache-dir", warm], "n": len(test)})
        record("predict.py --precision fp32, cold", "inference", "zoo_predict",
               {"argv": [*pred, "--cache-dir", "", "--precision", "fp32"], "n": len(test)})
        record("predict.py --batch-size 32 --precision fp32, cold", "inference", "zoo_predict",
               {"argv": [*pred, "--cache-dir", "", "--precision", "fp32", "--batch-size", "32"], "n": len(test)})
    if "onnx" in args.cases:
        subprocess.run([sys.executable, "-m", "zoo", "export", member, "--onnx", "--int8", "--calibration-data",
                        str(data)], cwd=ROOT, check=True, capture_output=True)
        record("predict.py --backend onnx, cold", "inference", "zoo_predict",
               {"argv": [*pred, "--cache-dir", "", "--backend", "onnx"], "n": len(test)})
        record("predict.py --backend onnx-int8, cold", "inference", "zoo_predict",
               {"argv": [*pred, "--cache-dir", "", "--backend", "onnx-int8"], "n": len(test)})
    if "graphs" in args.cases:
        subprocess.run([sys.executable, "-m", "zoo", "export", member, "--onnx", "--int8", "--calibration-data",
                        str(data)], cwd=ROOT, check=True, capture_output=True)
        graph_rows = compare_graph_runtimes(args, pred, len(test), out_dir)
        g = pd.DataFrame(graph_rows)
        base = g[g["case"].str.contains("ORT fp32")].set_index("round")["images_per_s"]
        g["x_ort_fp32_same_round"] = g["images_per_s"] / g["round"].map(base)
        g.to_csv(out_dir / "graphs.csv", index=False)
        print(g.groupby("case", sort=False)[["images_per_s", "x_ort_fp32_same_round", "load_1min"]].median()
              .to_markdown(floatfmt=".2f"))
    if "accuracy" in args.cases:
        acc_member = args.accuracy_member or str(out_dir / "trained" / "resnet10t")
        if not args.accuracy_member:
            subprocess.run([sys.executable, "train_all.py", "--data", args.data, "--models", "resnet10t", "--epochs",
                            "2", "--img-size", "128", "--lr", "1e-3", "--out", str(out_dir / "trained"), "--quiet"],
                           cwd=ROOT, check=True, capture_output=True)
        res = child("graph_accuracy", {"member": acc_member, "data": args.data}, out_dir)
        cfg = json.loads((Path(acc_member) / "config.json").read_text())
        print(f"int8 check at export: {cfg.get('export', {}).get('int8')}")
        print(pd.DataFrame(res["accuracy"]).T.to_markdown(floatfmt=".4f"))
    if "training" in args.cases:
        labels = [label_of[Path(p).name.rsplit("_", 1)[0]] for p in train]
        record("original loop (batch 32, fp32, decode every epoch)", "training", "baseline_training",
               {"paths": train, "labels": labels, "size": args.size, "backbone": args.backbone})
        out = str(Path(args.out) / "run")
        base = ["--data", str(data), "--models", args.backbone, "--epochs", "1", "--img-size", str(args.size),
                "--batch-size", "32", "--val-fraction", "0.1", "--cache-dir", "", "--out", out, "--quiet"]
        record("train_all.py (defaults: bf16 where native, micro-batch, channels_last)", "training", "zoo_train",
               {"argv": base, "out": out, "backbone": args.backbone})
        record("train_all.py --mixed-precision no", "training", "zoo_train",
               {"argv": [*base, "--mixed-precision", "no"], "out": out, "backbone": args.backbone})
    df = pd.DataFrame(rows)
    if df.empty:
        return 0
    for group in df["group"].unique():
        g = df["group"] == group
        base_row = df[g].iloc[0]
        df.loc[g, "speed_x"] = df.loc[g, "images_per_s"] / base_row["images_per_s"]
        df.loc[g, "rss_x"] = df.loc[g, "peak_rss_gb"] / base_row["peak_rss_gb"]
    df.to_csv(Path(args.out) / "speed.csv", index=False)
    m = machine_summary()
    print(f"\nmachine: {m}\nimages: {len(test)} predicted, {len(train)} in the training epoch, {args.size} px, "
          f"{args.backbone}")
    cols = ["group", "case", "images_per_s", "speed_x", "wall_s", "user_s", "sys_s", "peak_rss_gb", "rss_x"]
    print(df[cols].to_markdown(index=False, floatfmt=".2f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
