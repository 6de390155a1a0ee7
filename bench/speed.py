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
BASELINE_INFERENCE = "original loop (batch 1, fp32)"


# -- where the peak comes from: RSS sampled in the child, by phase ---------------------------------------------------
class RssSampler:
    """The process's resident set size sampled every ``interval`` s in a thread, attributed to the phase running then
    (phases nest: ``export > int8 quantisation``). :meth:`wrap` turns a function or method into a phase, so the bench
    measures the project's own code unchanged. ``table()``: per phase, in order of first entry, the RSS when it was
    first entered, the peak while it (or a phase inside it) ran, and the RSS when it last returned, in GB."""

    def __init__(self, interval: float = 0.005):
        import threading

        self.interval, self.stack, self.rows = interval, [], {}
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start_rss = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _note(self, rss: int) -> None:
        for i in range(len(self.stack)):
            row = self.rows[" > ".join(self.stack[: i + 1])]
            row["peak"] = max(row["peak"], rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._note(self.rss())

    def enter(self, name: str) -> None:
        rss = self.rss()
        self._note(rss)
        self.stack.append(name)
        self.rows.setdefault(" > ".join(self.stack), {"start": rss, "peak": rss, "end": rss})

    def leave(self) -> None:
        rss = self.rss()
        self._note(rss)
        self.rows[" > ".join(self.stack)]["end"] = rss
        self.stack.pop()

    def wrap(self, owner, attr: str, name: str) -> None:
        import functools

        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def phase(*args, **kwargs):
            self.enter(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()

        setattr(owner, attr, phase)

    def table(self) -> list[dict]:
        self._stop.set()
        self._thread.join()
        gb = 2**30
        return [{"phase": "start-up (interpreter, before the case's imports)", "rss_start_gb": 0.0,
                 "peak_gb": self.start_rss / gb, "rss_end_gb": self.start_rss / gb}] + [
            {"phase": ". " * k.count(" > ") + k.rsplit(" > ", 1)[-1], "rss_start_gb": v["start"] / gb,
             "peak_gb": v["peak"] / gb, "rss_end_gb": v["end"] / gb}
            for k, v in self.rows.items()]


def instrument_training(sampler: RssSampler) -> None:
    """The phases of train_all.py's run of one member (bone-zoo's own functions, wrapped where they are looked up)."""
    import zoo.cli.train
    import zoo.onnx
    import zoo.train

    for owner, attr, name in [
        (zoo.cli.train, "main", "train_all.main (imports done)"), (zoo.train, "load_images", "decode images"),
        (zoo.train.Trainer, "build", "model + optimizer build"), (zoo.train, "train_one_epoch", "training steps"),
        (zoo.train.Trainer, "validate", "validation"), (zoo.train.Checkpoint, "save", "checkpoint save"),
        (zoo.train.Trainer, "export", "member export (best weights, validation, save)"),
        (zoo.train.Trainer, "_export_graphs", "ONNX export"), (zoo.onnx, "export_onnx", "fp32 graph"),
        (zoo.onnx, "quantize_int8", "int8 quantisation"), (zoo.onnx, "graph_check", "graph check"),
    ]:
        sampler.wrap(owner, attr, name)


def model_state_gb(backbone: str, size: int) -> float:
    """Parameters + gradients + Adam's two moments of the network in fp32 (what training holds for the model)."""
    from zoo.model import BoneClassifier

    return sum(p.numel() for p in BoneClassifier(backbone, img_size=size).parameters()) * 4 * 4 / 2**30


# -- the limit: the machine's peak for the operation that dominates, through the same runtimes ---------------------
GEMM_N = 2048  # M = N = K of the micro-benchmark (17 GFLOP a call): large enough for each runtime's peak
ENGINES = {"onnx": "onnxruntime fp32", "onnx-int8": "onnxruntime int8", "openvino": "openvino fp32 graph (default "
           "precision)", "openvino-int8": "openvino int8"}  # predict's backend -> the engine whose peak bounds it


def _best_gops(fn, ops: float, seconds: float) -> float:
    """The best rate of ``fn`` (``ops`` operations a call) over ``seconds`` after two warm-up calls, in G/s."""
    fn()
    fn()
    best, end, n = 0.0, time.perf_counter() + seconds, 0
    while n < 3 or time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        best, n = max(best, ops / (time.perf_counter() - t0)), n + 1
    return best / 1e9


def gemm_graph(path: Path, n: int, int8: bool) -> Path:
    """An ONNX graph ``y = x @ w`` (``(n, n)`` float in and out); ``int8``: in the QDQ form quantize_static writes
    (int8 per-tensor weights, uint8 activations, Q/DQ around the MatMul), which the runtimes run as an int8 GEMM."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(0).standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
    if not int8:
        nodes, inits = [helper.make_node("MatMul", ["x", "w"], ["y"])], [numpy_helper.from_array(w, "w")]
    else:
        scale = float(np.abs(w).max() / 127)
        inits = [numpy_helper.from_array(np.round(w / scale).astype(np.int8), "wq"),
                 numpy_helper.from_array(np.array(scale, np.float32), "ws"),
                 numpy_helper.from_array(np.array(0, np.int8), "wz"),
                 numpy_helper.from_array(np.array(8 / 255, np.float32), "xs"),
                 numpy_helper.from_array(np.array(128, np.uint8), "xz"),
                 numpy_helper.from_array(np.array(0.25, np.float32), "ys"),
                 numpy_helper.from_array(np.array(128, np.uint8), "yz")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
                 helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
                 helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"]),
                 helper.make_node("MatMul", ["xd", "wd"], ["m"]),
                 helper.make_node("QuantizeLinear", ["m", "ys", "yz"], ["mq"]),
                 helper.make_node("DequantizeLinear", ["mq", "ys", "yz"], ["y"])]
    graph = helper.make_graph(nodes, "gemm", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def network_gflop(backbone: str, size: int) -> dict:
    """GFLOP per image of the network at ``size`` px (torch.utils.flop_counter: 2 per multiply-add of every conv and
    matmul in a forward pass): inference; training counts 3 forward passes (forward, and a backward of twice its work:
    gradients of inputs and of weights). The counter's own ``convolution_backward`` formula gives ~5x the forward
    on RegNet's grouped convolutions, not the 2x the backward of a convolution computes, so it is not used."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from zoo.model import BoneClassifier

    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        BoneClassifier(backbone, img_size=size).eval()(torch.zeros(1, 1, size, size))
    return {"inference": fwd.get_total_flops() / 1e9, "training": 3 * fwd.get_total_flops() / 1e9}


def roofline(a: dict) -> dict:
    """The peak GEMM rate of each engine the paths run on (torch fp32/bf16/int8, ONNX Runtime fp32/int8, OpenVINO on
    the fp32 graph at its default precision and on the int8 graph), and the network's GFLOP per image."""
    import importlib.util
    import tempfile

    import torch

    n, sec = a["n"], a["seconds"]
    ops = 2.0 * n**3
    g = torch.Generator().manual_seed(0)
    x32 = torch.randn(n, n, generator=g)
    x16 = x32.bfloat16()
    x8 = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=g)
    peaks = {}
    with torch.inference_mode():
        peaks["torch fp32"] = _best_gops(lambda: torch.mm(x32, x32), ops, sec)
        peaks["torch bf16"] = _best_gops(lambda: torch.mm(x16, x16), ops, sec)
        if hasattr(torch, "_int_mm"):
            peaks["torch int8 (_int_mm)"] = _best_gops(lambda: torch._int_mm(x8, x8), ops, sec)
    from zoo.onnx import session

    xin = {"x": x32.numpy()}
    with tempfile.TemporaryDirectory() as work:
        for int8 in (False, True):
            path = gemm_graph(Path(work) / f"gemm{int(int8)}.onnx", n, int8)
            sess = session(path)
            peaks[ENGINES["onnx-int8" if int8 else "onnx"]] = _best_gops(lambda s=sess: s.run(None, xin), ops, sec)
            if importlib.util.find_spec("openvino") is not None:
                from zoo.backends import openvino_compiled

                req = openvino_compiled(path).create_infer_request()
                peaks[ENGINES["openvino-int8" if int8 else "openvino"]] = _best_gops(
                    lambda r=req: r.infer({0: xin["x"]}), ops, sec)
    return {"images": 0, "loop_s": 0.0, "peaks_gops": peaks, "gflop_per_image": network_gflop(a["backbone"], a["size"])}


def limit_columns(df, roof: dict):
    """Each row's limit (images/s at its engine's peak GEMM rate: peak GOP/s / GOP per image) and its share of it."""
    per_image = df["group"].map(lambda g: roof["gflop_per_image"]["training" if g == "training" else "inference"])
    df["limit_images_s"] = df["engine"].map(roof["peaks_gops"]) / per_image
    df["of_limit"] = df["images_per_s"] / df["limit_images_s"]
    return df


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
    from zoo.ensemble import Ensemble
    from zoo.runtime import resolve_device, resolve_precision

    made, from_paths = [], Ensemble.from_paths  # the ensemble predict builds: which backend its member ran on

    def recording(*args, **kwargs):
        made.append(from_paths(*args, **kwargs))
        return made[-1]

    Ensemble.from_paths = recording
    import zoo.cli.predict as cli

    scoring, chunked = [], cli.predict_chunked  # the scoring itself: decode + every chunk, no start-up or loading

    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return chunked(*args, **kwargs)
        finally:
            scoring.append(time.perf_counter() - t)

    cli.predict_chunked = timed
    t0 = time.perf_counter()
    args = predict.get_args_parser().parse_args(a["argv"])
    rc = predict.main(args)
    if rc != 0:  # a refused or failed prediction is no measurement
        return {"rc": rc}
    backend = made[0].choice(made[0].members[0]).backend
    engine = ENGINES.get(backend) or f"torch {resolve_precision(args.precision, resolve_device(args.device))}"
    return {"images": a["n"], "loop_s": time.perf_counter() - t0, "score_s": sum(scoring), "rc": rc,
            "engine": engine}


def zoo_train(a: dict) -> dict:
    import pandas as pd

    import train_all

    rc = train_all.main(train_all.get_args_parser().parse_args(a["argv"]))
    member = Path(a["out"]) / a["backbone"]
    log = pd.read_json(member / "metrics.jsonl", lines=True)
    training = json.loads((member / "config.json").read_text())["training"]
    return {"images": training["n_train_images"], "loop_s": float(log["train_s"].iloc[-1]), "rc": rc,
            "engine": f"torch {training['mixed_precision']}"}


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
         "zoo_predict": zoo_predict, "zoo_train": zoo_train, "graph_accuracy": graph_accuracy, "roofline": roofline}
def instrument_baseline(sampler: RssSampler) -> None:
    import zoo.model

    sampler.wrap(zoo.model.BoneClassifier, "__init__", "model build")


TRACED = {"baseline_training": instrument_baseline, "zoo_train": instrument_training}  # RSS broken down by phase


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
    if res.get("rc", 0) != 0:  # the case ran but its command refused or failed: never a (fast) row
        raise RuntimeError(f"{kind} returned {res['rc']}; see {log.name}")
    return {**res, "wall_s": wall, "user_s": ru.ru_utime, "sys_s": ru.ru_stime, "peak_rss_gb": ru.ru_maxrss / 2**20}


def case_or_skip(args, cases: dict) -> int | None:
    """In a child (``--_case``): run that case, print its JSON result and return 0; in the parent: 0 with a ``skip``
    line where ``--data`` is absent; else None (go on)."""
    if args._case:
        sampler = None
        if args._case in TRACED:  # the RSS breakdown by phase; the parent's peak (os.wait4) stays the headline number
            sampler = RssSampler()
            TRACED[args._case](sampler)
            sampler.enter(args._case)
        res = cases[args._case](json.loads(args._args))
        if sampler is not None:
            sampler.leave()
            res["phases"] = sampler.table()
        print(json.dumps(res))
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
    p.add_argument("--cases", nargs="+", default=["roofline", "inference", "training", "trained", "onnx", "graphs",
                                                  "accuracy"],
                   help="which groups to run: roofline (peak GEMM rate of each engine, the network's GFLOP per "
                   "image, each path's share of the limit it implies), inference, training, trained (predict.py "
                   "with no flag, and each backend forced, on the member train_all.py writes: issue 21's targets), "
                   "onnx, graphs (ONNX Runtime against OpenVINO, interleaved), accuracy (study AUC of "
                   "--accuracy-member per backend) (default: all)")
    p.add_argument("--gemm-n", type=int, default=GEMM_N, help="M = N = K of the roofline GEMM (default %(default)s)")
    p.add_argument("--roofline-seconds", type=float, default=2.0, help="time per engine in the roofline case "
                   "(default %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="rounds of the interleaved graph runtime comparison "
                   "(default %(default)s)")
    p.add_argument("--accuracy-member", default=None, metavar="DIR", help="a member trained on --data (exported "
                   "by training) for the accuracy group; default: train resnet10t at 128 px for 2 epochs into OUT")
    p.add_argument("--trained-epochs", type=int, default=1, help="epochs of the trained case's member (train_all.py "
                   "defaults otherwise; 1 epoch at 512 px is ~2 CPU-minutes here, 10 ~14) (default %(default)s)")
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

    breakdowns = {}

    def record(name, group, kind, a, note="", engine="torch fp32"):
        r = {"engine": engine, **child(kind, a, out_dir)}  # the original loops run in fp32 on PyTorch
        if "phases" in r:
            breakdowns[name] = r.pop("phases")
        rows.append({"case": name, "group": group, **r, "images_per_s": r["images"] / (
            r["wall_s"] if group == "inference" else r["loop_s"]), "note": note})
        print(f"{name}: {rows[-1]['images_per_s']:.2f} img/s, wall {r['wall_s']:.1f}s, user {r['user_s']:.0f}s, "
              f"sys {r['sys_s']:.0f}s, peak {r['peak_rss_gb']:.2f} GB", flush=True)

    roof = None
    if "roofline" in args.cases:
        roof = child("roofline", {"n": args.gemm_n, "seconds": args.roofline_seconds, "backbone": args.backbone,
                                  "size": args.size}, out_dir)
        print_roofline(roof, args, os.getloadavg()[0])
    def predict_argv(models: str) -> list[str]:
        return ["--data", str(data), "--models", models, "--quiet", "-output", str(Path(args.out) / "p.csv")]

    pred = predict_argv(member)
    if "inference" in args.cases:
        record(BASELINE_INFERENCE, "inference", "baseline_inference",
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
        cols = ["images_per_s", "x_ort_fp32_same_round", "load_1min"]
        if roof is not None:
            g = limit_columns(g, roof)
            cols += ["limit_images_s", "of_limit"]
        g.to_csv(out_dir / "graphs.csv", index=False)
        print(g.groupby("case", sort=False)[cols].median().to_markdown(floatfmt=".2f"))
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
    if "trained" in args.cases:  # issue 21's targets: predict.py with no flag on a member train_all.py wrote
        # train_all.py's defaults on the whole train split: its validation and calibration studies decide the check
        out = Path(args.out) / ("trained-member" + ("" if args.trained_epochs == 1 else f"-e{args.trained_epochs}"))
        trained_member = out / args.backbone
        cfg = trained_member / "config.json"
        kept = json.loads(cfg.read_text()) if (trained_member / "model.int8.onnx").is_file() else {}
        if kept.get("img_size") != args.size or (kept.get("training") or {}).get("epochs") != args.trained_epochs:
            subprocess.run([sys.executable, "train_all.py", "--data", args.data, "--models", args.backbone, "--epochs",
                            str(args.trained_epochs), "--img-size", str(args.size), "--cache-dir",
                            str(Path(args.out) / "cache-trained"), "--out", str(out), "--quiet"], cwd=ROOT, check=True)
        check = json.loads((trained_member / "config.json").read_text())["export"].get("int8")
        print(f"trained member's int8 check: {check}", flush=True)
        if not any(r["case"] == BASELINE_INFERENCE for r in rows):
            record(BASELINE_INFERENCE, "inference", "baseline_inference",
                   {"member": member, "paths": test, "size": args.size})
        trained = [*predict_argv(str(trained_member)), "--cache-dir", ""]
        for backend in (None, "openvino-int8", "onnx-int8", "openvino", "onnx"):
            argv = trained if backend is None else [*trained, "--backend", backend]
            name = ("predict.py, no flag" if backend is None else f"predict.py --backend {backend}") + \
                " (member from train_all.py), cold"
            record(name, "inference", "zoo_predict", {"argv": argv, "n": len(test)})
            rows[-1]["note"] = f"ran on {rows[-1]['engine']}"  # what auto chose, from the ensemble predict built
    df = pd.DataFrame(rows)
    if df.empty:
        return 0
    for group in df["group"].unique():
        g = df["group"] == group
        base_row = df[g].iloc[0]
        df.loc[g, "speed_x"] = df.loc[g, "images_per_s"] / base_row["images_per_s"]
        df.loc[g, "rss_x"] = df.loc[g, "peak_rss_gb"] / base_row["peak_rss_gb"]
    cols = ["group", "case", "images_per_s", "speed_x", "wall_s", "user_s", "sys_s", "peak_rss_gb", "rss_x"]
    if roof is not None:
        df = limit_columns(df, roof)
        cols += ["engine", "limit_images_s", "of_limit"]
    df.to_csv(Path(args.out) / "speed.csv", index=False)
    m = machine_summary()
    print(f"\nmachine: {m}\nimages: {len(test)} predicted, {len(train)} in the training epoch, {args.size} px, "
          f"{args.backbone}")
    print(df[cols].to_markdown(index=False, floatfmt=".2f"))
    if breakdowns:
        print_breakdowns(breakdowns, model_state_gb(args.backbone, args.size), os.getloadavg()[0])
    return 0


def print_roofline(roof: dict, args, load: float) -> None:
    """The peak of each engine and the limit it implies for the network at --size."""
    import pandas as pd

    f = roof["gflop_per_image"]
    print(f"{args.backbone} at {args.size} px: {f['inference']:.2f} GFLOP per image forward, {f['training']:.2f} "
          f"a training image (3x; torch.utils.flop_counter); GEMM {args.gemm_n}^3, best of {args.roofline_seconds:g} s "
          f"per engine, load average {load:.1f}")
    t = pd.DataFrame({"peak_gops": roof["peaks_gops"]})
    t["limit_inference_images_s"] = t["peak_gops"] / f["inference"]
    t["limit_training_images_s"] = t["peak_gops"] / f["training"]
    print(t.to_markdown(floatfmt=".1f"), flush=True)


def print_breakdowns(breakdowns: dict[str, list[dict]], state_gb: float, load: float) -> None:
    """One table per traced case: where its peak RSS comes from."""
    import pandas as pd

    print(f"\nWhere the peak comes from (RSS sampled every 5 ms in the case's process; GB; model parameters + "
          f"gradients + Adam state in fp32: {state_gb:.3f} GB; load average now {load:.1f}):")
    for name, phases in breakdowns.items():
        t = pd.DataFrame(phases)
        t["peak_over_start_gb"] = t["peak_gb"] - t["rss_start_gb"]
        print(f"\n{name}\n" + t.to_markdown(index=False, floatfmt=".2f"))


if __name__ == "__main__":
    sys.exit(main())
