"""TrainConfig (every train_all.py flag is one field) and the Trainer every zoo member shares."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from zoo.data import Dataset, ImageArray, load_images, split_by_study, studies
from zoo.data.transforms import to_input, train_augment
from zoo.loss import WeightedBCE, positive_weight
from zoo.metrics import aggregate_studies, best_threshold, binary_metrics
from zoo.model import BoneClassifier


@dataclass
class TrainConfig:
    """How one member is trained. Defaults are the seed project's recipe."""

    backbone: str = "regnet_x_800mf"
    epochs: int = 20
    img_size: int = 512
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    step_size: int = 5
    gamma: float = 0.1
    patience: int = 0  # early stopping after this many epochs without a better val AUC; 0 = off
    val_fraction: float = 0.2
    seed: int = 0
    pretrained: bool = False
    pretrained_weights: str | None = None  # a .safetensors file, or a folder of <backbone>.safetensors files
    rotation: float = 30.0
    hflip: bool = True
    translate: float = 0.1
    head_hidden: list[int] = field(default_factory=lambda: [1024, 512])
    dropout: float = 0.3
    pos_weight: float | None = None  # None: n_neg / n_pos of the training split
    mean: float = 0.449
    std: float = 0.226
    amp: bool = True  # mixed precision (bf16/fp16) on CUDA only
    device: str = "auto"
    workers: int = -1  # DataLoader workers; -1 = auto (0 on CPU, up to 8 on CUDA)
    cache_dir: str | None = None  # decoded-image cache; None = ~/.cache/bone-zoo/images, "" = in memory
    quiet: bool = False

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def auto_workers(requested: int, device: torch.device) -> int:
    if requested >= 0:
        return requested
    return min(8, max(0, (os.cpu_count() or 1) - 1)) if device.type == "cuda" else 0


def _pretrained_file(cfg: TrainConfig) -> str | None:
    if not cfg.pretrained_weights:
        return None
    p = Path(cfg.pretrained_weights).expanduser()
    if p.is_dir():
        for cand in (p / f"{cfg.backbone}.safetensors", p / cfg.backbone / "model.safetensors"):
            if cand.is_file():
                return str(cand)
        raise FileNotFoundError(f"{p}: no {cfg.backbone}.safetensors or {cfg.backbone}/model.safetensors in it")
    return str(p)


class ArrayDataset(torch.utils.data.Dataset):
    """Rows of a decoded :class:`ImageArray` as ``(uint8 (1, S, S) tensor, label)``, optionally augmented."""

    def __init__(self, images: ImageArray, rows: np.ndarray, labels: np.ndarray, augment=None):
        self.images, self.rows, self.labels, self.augment = images, rows, labels.astype(np.float32), augment

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        x = torch.from_numpy(np.array(self.images.array[self.rows[i]]))[None]
        if self.augment is not None:
            x = self.augment(x)
        return x, self.labels[i]


def autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


@torch.inference_mode()
def predict_array(
    model: BoneClassifier, loader: DataLoader, device: torch.device, amp: bool = True, tta: bool = False,
    quiet: bool = True, desc: str = "predict",
) -> np.ndarray:
    """Probabilities for every item of ``loader`` (uint8 batches); ``tta`` averages with the horizontal flip."""
    model.eval()
    out = []
    for x, _ in tqdm(loader, desc=desc, leave=False, disable=True if quiet else None, unit="batch"):
        x = to_input(x.to(device, non_blocking=True), model.mean, model.std)
        with autocast(device, amp):
            p = torch.sigmoid(model(x).float())
            if tta:
                p = (p + torch.sigmoid(model(torch.flip(x, dims=[-1])).float())) / 2
        out.append(p.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def _save_optimizer(opt: torch.optim.Optimizer, path: Path) -> dict:
    sd = opt.state_dict()
    tensors = {f"{i}.{k}": v.contiguous() for i, st in sd["state"].items() for k, v in st.items()
               if isinstance(v, torch.Tensor)}
    save_file(tensors, str(path))
    return {"param_groups": sd["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, path: Path, meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in load_file(str(path)).items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Trainer:
    """Trains one member on a :class:`Dataset` into ``out_dir``:
    model.safetensors, config.json, README.md, metrics.json, metrics.jsonl, val_predictions.csv, curves.png.

    While it runs, ``out_dir/checkpoint/`` holds the last and best epochs (safetensors + JSON) for ``resume``.
    """

    def __init__(self, config: TrainConfig, dataset: Dataset, out_dir: str | Path, images: ImageArray | None = None):
        self.cfg = config
        self.dataset = dataset
        self.out = Path(out_dir)
        self.device = resolve_device(config.device)
        self.train_df, self.val_df = split_by_study(dataset.train, config.val_fraction, config.seed)
        self.images = images

    # -- data -------------------------------------------------------------------------------------------------
    def _loaders(self) -> tuple[ArrayDataset, DataLoader]:
        cfg = self.cfg
        if self.images is None or self.images.size != cfg.img_size:
            paths = pd.concat([self.train_df, self.val_df])["path"].tolist()
            self.images = load_images(paths, cfg.img_size, cfg.cache_dir, quiet=cfg.quiet)
        index = self.images.index()
        used = set(self.train_df["path"]) | set(self.val_df["path"])
        self.unreadable = {p: e for p, e in self.images.errors.items() if p in used}
        ok = lambda df: df[[self.images.ok[index[p]] for p in df["path"]]].reset_index(drop=True)  # noqa: E731
        self.train_df, self.val_df = ok(self.train_df), ok(self.val_df)
        rows = lambda df: np.array([index[p] for p in df["path"]], dtype=np.int64)  # noqa: E731
        workers = auto_workers(cfg.workers, self.device)
        train_ds = ArrayDataset(self.images, rows(self.train_df), self.train_df["label"].to_numpy(),
                                train_augment(cfg.rotation, cfg.hflip, cfg.translate))
        val_ds = ArrayDataset(self.images, rows(self.val_df), self.val_df["label"].to_numpy())
        pin = self.device.type == "cuda"
        val_loader = DataLoader(val_ds, batch_size=cfg.batch_size * 2, shuffle=False, num_workers=workers,
                                pin_memory=pin, persistent_workers=workers > 0)
        self.workers, self.pin = workers, pin
        return train_ds, val_loader

    def _train_loader(self, ds: ArrayDataset, epoch: int) -> DataLoader:
        g = torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch)
        return DataLoader(ds, batch_size=self.cfg.batch_size, shuffle=True, generator=g,
                          drop_last=len(ds) > self.cfg.batch_size, num_workers=self.workers, pin_memory=self.pin)

    # -- validation -------------------------------------------------------------------------------------------
    def _validate(self, model: BoneClassifier, loader: DataLoader) -> tuple[pd.DataFrame, dict[str, float]]:
        probs = predict_array(model, loader, self.device, self.cfg.amp)
        df = self.val_df[["id", "part", "label"]].copy()
        df["prob"] = probs
        st = aggregate_studies(df, "prob")
        return st, binary_metrics(st["label"].to_numpy(), st["prob"].to_numpy(), 0.5)

    # -- the loop -----------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, Any]:
        cfg = self.cfg
        ckpt = self.out / "checkpoint"
        if resume and (self.out / "metrics.json").is_file() and not ckpt.exists():
            return json.loads((self.out / "metrics.json").read_text()) | {"skipped": "already trained"}
        if not resume:
            shutil.rmtree(ckpt, ignore_errors=True)
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
        ckpt.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        train_ds, val_loader = self._loaders()
        pos_weight = cfg.pos_weight if cfg.pos_weight is not None else positive_weight(self.train_df["label"])
        model = BoneClassifier.new(
            cfg.backbone, pretrained=cfg.pretrained, weights=_pretrained_file(cfg), img_size=cfg.img_size,
            head_hidden=cfg.head_hidden, dropout=cfg.dropout, mean=cfg.mean, std=cfg.std,
        ).to(self.device)
        loss_fn = WeightedBCE(pos_weight).to(self.device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
        state = {"epoch": 0, "best_auc": -math.inf, "best_epoch": 0, "train_time_s": 0.0}
        if resume and (ckpt / "state.json").is_file():
            state = json.loads((ckpt / "state.json").read_text())
            model.load_state_dict(load_file(str(ckpt / "last.safetensors"), device=str(self.device)))
            _load_optimizer(opt, ckpt / "optimizer.safetensors", state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if not cfg.quiet:
                print(f"[{cfg.backbone}] resuming after epoch {state['epoch']}")
        log = self.out / "metrics.jsonl"
        for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            torch.manual_seed(cfg.seed * 1000 + epoch)
            model.train()
            losses = []
            bar = tqdm(self._train_loader(train_ds, epoch), desc=f"{cfg.backbone} {epoch}/{cfg.epochs}",
                       leave=False, disable=True if cfg.quiet else None, unit="batch")
            for x, y in bar:
                x = to_input(x.to(self.device, non_blocking=True), cfg.mean, cfg.std)
                y = y.to(self.device, non_blocking=True)
                with autocast(self.device, cfg.amp):
                    loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{np.mean(losses):.4f}")
            lr = opt.param_groups[0]["lr"]
            sched.step()
            _, m = self._validate(model, val_loader)
            state["train_time_s"] += time.perf_counter() - t0
            train_loss = float(np.mean(losses)) if losses else float("nan")
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"{cfg.backbone}: training loss became {train_loss} at epoch {epoch}")
            auc = m["auc"] if not math.isnan(m["auc"]) else -1.0
            row = {"epoch": epoch, "train_loss": train_loss, "val_auc": m["auc"], "val_kappa": m["kappa"],
                   "val_accuracy": m["accuracy"], "lr": lr, "time_s": round(time.perf_counter() - t0, 3)}
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if auc > state["best_auc"]:
                state["best_auc"], state["best_epoch"] = auc, epoch
                save_file(model.state_dict(), str(ckpt / "best.safetensors"))
            save_file(model.state_dict(), str(ckpt / "last.safetensors"))
            state["optimizer"] = _save_optimizer(opt, ckpt / "optimizer.safetensors")
            state["scheduler"] = sched.state_dict()
            state["epoch"] = epoch
            _atomic_write(ckpt / "state.json", json.dumps(state))
            if not cfg.quiet:
                tqdm.write(f"[{cfg.backbone}] epoch {epoch}/{cfg.epochs} loss {train_loss:.4f} "
                           f"val AUC {m['auc']:.4f} kappa {m['kappa']:.3f} ({row['time_s']:.1f}s)")
            if cfg.patience and epoch - state["best_epoch"] >= cfg.patience:
                if not cfg.quiet:
                    tqdm.write(f"[{cfg.backbone}] early stop: no better val AUC for {cfg.patience} epochs")
                break
        return self._finish(model, val_loader, state, pos_weight)

    def _finish(self, model: BoneClassifier, val_loader: DataLoader, state: dict, pos_weight: float) -> dict:
        cfg = self.cfg
        ckpt = self.out / "checkpoint"
        model.load_state_dict(load_file(str(ckpt / "best.safetensors"), device=str(self.device)))
        st, _ = self._validate(model, val_loader)
        thr = best_threshold(st["label"].to_numpy(), st["prob"].to_numpy())
        m = binary_metrics(st["label"].to_numpy(), st["prob"].to_numpy(), thr)
        n_params = sum(p.numel() for p in model.parameters())
        metrics = {
            "backbone": cfg.backbone, "val_auc": m["auc"], "val_kappa": m["kappa"], "val_accuracy": m["accuracy"],
            "val_sensitivity": m["sensitivity"], "val_specificity": m["specificity"], "threshold": thr,
            "best_epoch": state["best_epoch"], "epochs_run": state["epoch"], "params": n_params,
            "train_time_s": round(state["train_time_s"], 2), "n_val_studies": m["n"],
        }
        train_st = studies(self.dataset.train)
        model.threshold = thr
        model.metrics = metrics
        model.training_config = {
            **{k: v for k, v in asdict(cfg).items() if k not in ("device", "workers", "cache_dir", "quiet")},
            "dataset_name": self.dataset.name, "dataset_layout": self.dataset.layout,
            "n_train_images": len(self.train_df), "n_val_images": len(self.val_df), "n_val_studies": m["n"],
            "n_unlabelled_studies": int(train_st["label"].isna().sum()), "pos_weight": round(pos_weight, 4),
            "unreadable_images": len(self.unreadable), "device": self.device.type,
        }
        model.cpu().save_member(self.out)
        st.to_csv(self.out / "val_predictions.csv", index=False)
        plot_curves(self.out / "metrics.jsonl", self.out / "curves.png", cfg.backbone)
        _atomic_write(self.out / "metrics.json", json.dumps(metrics, indent=2))  # last: marks the member complete
        shutil.rmtree(ckpt, ignore_errors=True)
        return metrics


def plot_curves(jsonl: Path, path: Path, title: str) -> None:
    """Training loss and validation AUC per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.read_json(jsonl, lines=True)
    fig, ax = plt.subplots(figsize=(5, 3), dpi=110)
    ax.plot(df["epoch"], df["train_loss"], "o-", label="train loss")
    ax.set(xlabel="epoch", ylabel="weighted BCE", title=title)
    ax2 = ax.twinx()
    ax2.plot(df["epoch"], df["val_auc"], "s-", color="C1", label="val AUC")
    ax2.set(ylabel="val AUC (study)", ylim=(0, 1))
    fig.legend(loc="lower center", ncol=2, fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
