"""GPU bench: training and inference images/s, the share of time the GPU is busy and the share the loader keeps it
waiting, in one short run (well under 8 minutes on one CUDA GPU), printed as one Markdown table for bench/README.md.

  python bench/gpu.py                                        # synthetic radiographs
  python bench/gpu.py --data ../shared/data/fracatlas-hand   # real ones (competition layout or MURA-v1.1)
  python bench/gpu.py --allow-cpu --tiny                     # the same code paths on CPU, 64 px (the suite runs it)

Training is the project's own Trainer (zoo.train, zoo.engine on Accelerate): regnet_x_800mf at 512 px, batch 32, the
default recipe's augmentation, bf16, channels_last, loader workers (up to 8). Its training loader is wrapped, nothing
else: CUDA events recorded just before and just after each ``next(loader)`` time how long the GPU stood idle waiting
for a batch (the host->device copy of the batch included), and NVML (``torch.cuda.utilization``, needs pynvml /
nvidia-ml-py) is sampled every 50 ms for the share of time a kernel ran. Without NVML the busy share is 1 - the
loader's share (kernel-launch gaps then count as busy). Epoch 1 warms up (cuDNN autotuning, workers starting) and is
not reported. Inference is ``Ensemble.predict_images`` (what predict.py runs) with the trained member over every
image, from the decoded cache, measured on its second pass. With no CUDA GPU it says so and exits 0 (unless
``--allow-cpu --tiny``; on CPU the "GPU" columns are the compute's share of the host's time).
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["phase", "device", "backbone", "px", "batch", "precision", "workers", "images", "images/s", "GPU busy %",
           "loader wait %", "busy measured by"]


class UtilSampler:
    """NVML GPU utilisation sampled in a thread (``torch.cuda.utilization``); ``mean()`` is None without NVML."""

    def __init__(self, device, period: float = 0.05):
        self.device, self.period, self.samples = device, period, []
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            try:
                torch.cuda.utilization(self.device)
            except Exception:  # no pynvml / amdsmi: no samples
                return self
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        import torch

        while not self._stop.wait(self.period):
            self.samples.append(torch.cuda.utilization(self.device))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


class TimedLoader:
    """The (prepared) training loader, unchanged, with each epoch's wall time, images and the time the device waited
    for ``next()``: CUDA events on a GPU (idle time as the device saw it), the host clock on CPU."""

    def __init__(self, loader, device):
        self.loader, self.device, self.epochs = loader, device, []

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):  # set_epoch, dataset, ... of the wrapped loader
        return getattr(self.loader, name)

    def __iter__(self):
        import torch

        cuda = self.device.type == "cuda"
        stamp = _event if cuda else time.perf_counter
        waits, images = [], 0
        with UtilSampler(self.device) as util:
            start = stamp()
            it = iter(self.loader)
            while True:
                before = stamp()
                try:
                    batch = next(it)
                except StopIteration:
                    break
                waits.append((before, stamp()))
                images += len(batch[1])
                yield batch
            end = stamp()
            if cuda:
                torch.cuda.synchronize(self.device)
        span = (lambda a, b: a.elapsed_time(b) / 1000) if cuda else (lambda a, b: b - a)
        self.epochs.append({"wall_s": span(start, end), "wait_s": sum(span(a, b) for a, b in waits),
                            "images": images, "busy": util.mean()})


def _event():
    """A CUDA event recorded now on the current stream (timestamped when the device reaches it)."""
    import torch

    e = torch.cuda.Event(enable_timing=True)
    e.record()
    return e


def make_trainer_class():
    """:class:`zoo.train.Trainer` whose training loader is a :class:`TimedLoader` (nothing else changes)."""
    from zoo.train import Trainer

    class MeasuredTrainer(Trainer):
        def loaders(self, data):
            train, val = super().loaders(data)
            self.timed = TimedLoader(train, self.device)
            return self.timed, val

    return MeasuredTrainer


def get_args_parser() -> argparse.ArgumentParser:
    from zoo.runtime import PRECISIONS, precision_name

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--data", default=None, help="dataset folder (competition layout or MURA-v1.1); default: synthetic radiographs")
    a("--backbone", default="regnet_x_800mf", help="(default %(default)s)")
    a("--img-size", type=int, default=None, help="px (default 512; 64 with --tiny)")
    a("--batch-size", type=int, default=None, help="(default 32; 8 with --tiny)")
    a("--precision", default=None, type=precision_name, choices=PRECISIONS, help="training mixed precision: bf16 "
      "(default on CUDA), fp32 (alias no), fp16 or auto (default on CPU)")
    a("--workers", type=int, default=-1, help="loader workers, -1 = auto: up to 8 on CUDA, 0 on CPU (default -1)")
    a("--epochs", type=int, default=None, help="epochs; the first warms up and is not reported (default 3; 2 with "
      "--tiny)")
    a("--studies", type=int, default=None, help="synthetic training studies (default 2000, ~4400 images; 16 with "
      "--tiny)")
    a("--out", default=str(ROOT / "bench" / "out" / "gpu"), help="work folder: data, cache, the trained member")
    a("--allow-cpu", action="store_true", help="with --tiny: run on CPU when there is no GPU")
    a("--tiny", action="store_true", help="a tiny configuration (64 px, a few dozen images): the code paths in seconds")
    return p


def plan(args: argparse.Namespace, cuda: bool) -> dict:
    """The run's settings from the flags: the GPU configuration, or the tiny one."""
    tiny = args.tiny
    return {"img_size": args.img_size or (64 if tiny else 512), "batch_size": args.batch_size or (8 if tiny else 32),
            "precision": args.precision or ("bf16" if cuda else "auto"), "epochs": args.epochs or (2 if tiny else 3),
            "studies": args.studies or (16 if tiny else 2000), "test_studies": 8 if tiny else 500,
            "device": "cuda" if cuda else "cpu"}


def load_data(args: argparse.Namespace, s: dict, out: Path):
    from zoo.data import SyntheticSpec, ensure_synthetic, load_dataset

    if args.data:
        return load_dataset(Path(args.data))
    root = ensure_synthetic(out / f"synthetic-{s['studies']}", SyntheticSpec(n_train=s["studies"],
                                                                             n_test=s["test_studies"]))
    return load_dataset(root)


def train(args: argparse.Namespace, s: dict, dataset, out: Path):
    """One member trained by the project's Trainer; returns (trainer, member folder)."""
    from zoo.config import resolve
    from zoo.recipes import DEFAULT_RECIPE

    cfg = resolve(DEFAULT_RECIPE, {"epochs": s["epochs"], "img_size": s["img_size"], "batch_size": s["batch_size"],
                                   "mixed_precision": s["precision"], "workers": args.workers, "device": s["device"],
                                   "cache_dir": str(out / "cache"), "pretrained": False, "calibration_fraction": 0.0,
                                   "quiet": True}, backbone=args.backbone)
    trainer = make_trainer_class()(cfg, dataset, out / "run" / args.backbone)
    trainer.fit()
    return trainer, out / "run" / args.backbone


def infer(member: Path, dataset, s: dict, out: Path, workers: int) -> dict:
    """Ensemble.predict_images (predict.py's path) over every image of the dataset (training and test: enough that
    starting the loader's workers is not most of it) from the decoded cache, second pass timed."""
    import pandas as pd
    import torch

    from zoo.ensemble import Ensemble

    ens = Ensemble.from_paths([str(member)], device=s["device"])
    images = pd.concat([dataset.train, dataset.test], ignore_index=True)
    arrays = ens.decode(images["path"].tolist(), str(out / "cache"), quiet=True)
    kw = {"batch_size": s["batch_size"], "workers": workers, "quiet": True, "arrays": arrays}
    ens.predict_images(images, **kw)  # warm-up: cuDNN autotuning, allocator
    with UtilSampler(ens.device) as util:
        t0 = time.perf_counter()
        ens.predict_images(images, **kw)
        if ens.device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    n = int(sum(int(a.ok.sum()) for a in arrays.values()))
    return {"images": n, "wall_s": wall, "busy": util.mean(), "precision": ens.precision}


def rows(trainer, inference: dict, s: dict, args) -> list[dict]:
    """The table's rows: training (epochs after the first, summed) and inference."""
    from zoo.inference import auto_workers
    from zoo.runtime import precision_name, resolve_precision

    device = trainer.device
    ep = trainer.timed.epochs[1:] or trainer.timed.epochs
    wall, wait, n = (sum(e[k] for e in ep) for k in ("wall_s", "wait_s", "images"))
    busy = [e["busy"] for e in ep if e["busy"] is not None]
    cuda = device.type == "cuda"
    how = "NVML" if busy else "CUDA events (1 - loader wait)" if cuda else "host clock (CPU: 1 - loader wait)"
    common = {"device": torch_device_name(device), "backbone": args.backbone, "px": s["img_size"],
              "batch": s["batch_size"], "workers": auto_workers(args.workers, device)}
    train_row = {"phase": f"training (epochs 2-{len(trainer.timed.epochs)})" if len(trainer.timed.epochs) > 1
                 else "training (epoch 1)", **common, "precision": precision_name(trainer.accelerator.mixed_precision),
                 "images": n, "images/s": n / wall,
                 "GPU busy %": 100 * (sum(busy) / len(busy) if busy else 1 - wait / wall),
                 "loader wait %": 100 * wait / wall, "busy measured by": how}
    ib = inference["busy"]
    infer_row = {"phase": "inference (predict_images)", **common,
                 "precision": resolve_precision(inference["precision"], device), "images": inference["images"],
                 "images/s": inference["images"] / inference["wall_s"],
                 "GPU busy %": math.nan if ib is None else 100 * ib, "loader wait %": math.nan,
                 "busy measured by": "NVML" if ib is not None else "-"}
    return [train_row, infer_row]


def torch_device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def to_markdown(table: list[dict]) -> str:
    fmt = lambda v: "-" if isinstance(v, float) and math.isnan(v) else f"{v:.1f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |" for r in table]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not (args.allow_cpu and args.tiny):
        print("no CUDA GPU here: bench/gpu.py measured nothing (--allow-cpu --tiny runs its code paths on CPU)")
        return 0
    from zoo.runtime import machine_summary

    s = plan(args, cuda)
    out = Path(args.out)
    t0 = time.perf_counter()
    dataset = load_data(args, s, out)
    trainer, member = train(args, s, dataset, out)
    inference = infer(member, dataset, s, out, args.workers)
    table = rows(trainer, inference, s, args)
    print(f"machine: {machine_summary()}\ndata: {args.data or 'synthetic'} ({len(dataset.train)} training images), "
          f"total {time.perf_counter() - t0:.0f} s\n")
    print(to_markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
