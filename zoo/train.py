"""TrainConfig (every train_all.py flag is one field) and the Trainer that wires data, engine and checkpoints.

The Trainer only wires small parts: :mod:`zoo.engine` (the step and the evaluation), :mod:`zoo.checkpoint` (resume),
:mod:`zoo.inference` (loaders), on an ``accelerate.Accelerator`` (device placement, mixed precision, DDP, gradient
accumulation). The same code runs as ``python train_all.py`` (one CPU or GPU), under ``accelerate launch
--multi_gpu`` or ``torchrun`` (one process per device, any number of machines).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from zoo import tracking
from zoo.atomic import save_figure, write_csv, write_text
from zoo.boxes import BOX_LOSS, SHARPNESS
from zoo.calibration import Calibrator, auto_calibration_fraction, brier, calibration_share, calibration_split, ece
from zoo.checkpoint import Checkpoint
from zoo.config import RUNTIME_FIELDS, TrainConfig
from zoo.data import DatasetTables, ImageArray, fold_split, load_images, split_by_study, studies
from zoo.data.transforms import train_augment
from zoo.engine import TrainStep, evaluate, train_one_epoch
from zoo.inference import ArrayDataset, auto_workers
from zoo.loss import WeightedBCE, positive_weight
from zoo.metrics import aggregate_studies, best_threshold, binary_metrics
from zoo.model import BoneClassifier
from zoo.optim import LrSchedule, build_optimizer, warmup_cosine  # noqa: F401 (warmup_cosine: re-exported)
from zoo.runtime import precision_name, resolve_device, resolve_precision, tune_allocator


def micro_batch(cfg: TrainConfig, device_type: str) -> int:
    """Images per forward/backward: ``cfg.micro_batch``, or (auto, on CPU) the largest divisor of the batch whose
    activations fit what 8 images take at 512 px, i.e. ``8 * (512 / img_size)^2`` images (the whole batch at small
    sizes). A batch of 32 at 512 px on CPU then needs a quarter of the activation memory and runs faster
    (bench/speed.py); gradients of the chunks are accumulated, so the optimizer still steps once per ``batch_size``.
    """
    if cfg.micro_batch > 0:
        size = cfg.micro_batch
    elif device_type == "cpu":
        fits = max(1, int(8 * (512 / cfg.img_size) ** 2))
        size = max(d for d in range(1, min(fits, cfg.batch_size) + 1) if cfg.batch_size % d == 0)
    else:
        size = cfg.batch_size
    if cfg.batch_size % size:
        raise ValueError(f"--micro-batch {size} must divide --batch-size {cfg.batch_size}")
    return size


ACCELERATE_PRECISION = {"fp32": "no"}  # our name -> Accelerate's


def make_accelerator(cfg: TrainConfig):
    """The ``accelerate.Accelerator`` for ``cfg``: device (``--device cpu`` forces CPU), mixed precision, gradient
    accumulation (micro-batches x ``grad_accum``), seeded shuffling that depends only on (seed, epoch), optional
    torch.compile.

    One Accelerator per process: a second one with other precision settings resets the (process-wide) state first.
    """
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.state import AcceleratorState
    from accelerate.utils import GradScalerKwargs

    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device.index)
    precision = resolve_precision(cfg.mixed_precision, device, training=True)
    precision = ACCELERATE_PRECISION.get(precision, precision)
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != precision:
        AcceleratorState._reset_state()
    chunks = cfg.batch_size // micro_batch(cfg, device.type)
    return Accelerator(
        cpu=device.type == "cpu", mixed_precision=precision,
        gradient_accumulation_steps=chunks * max(1, cfg.grad_accum),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
        dynamo_backend="inductor" if cfg.compile else "no", kwargs_handlers=[GradScalerKwargs()],
        **tracking.accelerator_kwargs(cfg.log_with, cfg.project_dir),
    )


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


@dataclass
class TrainData:
    """The readable labelled images of one member, split by study, as datasets."""

    train_df: pd.DataFrame
    val_df: pd.DataFrame
    train_ds: ArrayDataset
    val_ds: ArrayDataset
    cal_df: pd.DataFrame | None = None  # the calibration split: predicted once, after every selection step
    cal_ds: ArrayDataset | None = None


@dataclass
class _Run:
    """One member's training in progress: what :meth:`Trainer.fit`'s epochs share."""

    train_loader: Any
    val_loader: Any
    model: torch.nn.Module  # prepared (DDP-wrapped under DDP)
    optimizer: Any  # Accelerate's wrapper; ``.optimizer`` is the torch one
    schedule: LrSchedule
    ema: Any  # timm ModelEmaV3, or None
    step: TrainStep
    state: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "best_auc": -math.inf, "best_epoch": 0,
                                                           "kept_epoch": 0, "train_time_s": 0.0, "steps": 0})
    box_loss: Any = None  # zoo.boxes.BoxLoss with --boxes (also run.step.loss_fn): its warm-up, its hook

    @property
    def scored(self) -> torch.nn.Module:
        """What is validated, kept as best and exported: the weight EMA when there is one."""
        return self.model if self.ema is None else self.ema.module


class Trainer:
    """Trains one member on a :class:`DatasetTables` into ``out_dir``:
    model.safetensors, config.json, README.md, metrics.json, metrics.jsonl, val_predictions.csv, curves.png.

    While it runs, ``out_dir/checkpoint/`` holds the last complete epoch and the best weights for ``resume``.
    Under DDP every process runs it; only the main process writes files.
    """

    def __init__(self, config: TrainConfig, dataset: DatasetTables, out_dir: str | Path,
                 images: ImageArray | None = None, accelerator=None, pseudo: pd.DataFrame | None = None,
                 pseudo_record: dict | None = None):
        self.cfg = config
        self.dataset = dataset
        self.out = Path(out_dir)
        tune_allocator()
        self.accelerator = accelerator or make_accelerator(config)
        self.device = self.accelerator.device
        self.micro_batch = micro_batch(config, self.device.type)
        self.checkpoint = Checkpoint(self.out / "checkpoint")
        # the calibration split first (the same for every member of a run: it depends on the data and seed only),
        # out of training and of every selection step; validation and folds split what is left
        self.calibration_fraction = auto_calibration_fraction(dataset.train, config.calibration_fraction)
        pool, self.cal_df = calibration_split(dataset.train, self.calibration_fraction, config.seed)
        if config.folds > 1:  # k-fold: this member validates on fold `fold`; its val predictions are out-of-fold
            self.train_df, self.val_df = fold_split(pool, config.folds, config.fold, config.seed)
        else:
            self.train_df, self.val_df = split_by_study(pool, config.val_fraction, config.seed)
        if pseudo is not None and len(pseudo) and "patient" in pseudo.columns:  # held-out patients stay out
            held = set(self.val_df.get("patient", ())) | set(self.cal_df.get("patient", ()))
            pseudo = pseudo[~pseudo["patient"].isin(held)]
        if pseudo is not None and len(pseudo):  # pseudo-labelled unlabelled studies: training only, soft targets
            self.train_df = pd.concat([self.train_df, pseudo[self.train_df.columns]], ignore_index=True)
        self.pseudo_record = pseudo_record  # what --semi-supervised used (None: labelled studies only)
        self.images = images  # decoded images at cfg.img_size (shared by members of one run)
        self.unreadable: dict[str, str] = {}  # path -> why, among this member's images
        self.pos_weight: float | None = None  # set from the readable training split
        self.boxes_record: dict | None = None  # what --boxes matched (zoo.boxes), for config.json
        self.keep = self._resolve_keep(False)  # auto: resolved again in _start, where the box loss is known

    def _resolve_keep(self, box_loss_acts: bool) -> str:
        """``--keep`` as resolved: auto is last where a box loss acts (its maps go on moving into the boxes after the
        validation AUC peaks), else best."""
        return self.cfg.keep if self.cfg.keep != "auto" else ("last" if box_loss_acts else "best")

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def log(self, msg: str) -> None:
        if not self.cfg.quiet and self.is_main:
            tqdm.write(f"[{self.cfg.backbone}] {msg}")

    def is_finished(self) -> bool:
        """A complete member (metrics.json is written last) with no checkpoint left to resume."""
        return (self.out / "metrics.json").is_file() and not self.checkpoint.exists()

    # -- parts --------------------------------------------------------------------------------------------------
    def prepare_data(self) -> TrainData:
        cfg = self.cfg
        paths = pd.concat([self.train_df, self.val_df, self.cal_df])["path"].tolist()
        if self.images is None or self.images.size != cfg.img_size or not set(paths) <= set(self.images.paths):
            with self.accelerator.main_process_first():  # the main process fills the disk cache, the others read it
                self.images = load_images(paths, cfg.img_size, cfg.cache_dir, quiet=cfg.quiet or not self.is_main,
                                          max_gb=cfg.cache_max_gb)
        index = self.images.index()
        ok = lambda df: df[np.array([self.images.ok[index[p]] for p in df["path"]], dtype=bool)].reset_index(  # noqa: E731
            drop=True)
        rows = lambda df: np.array([index[p] for p in df["path"]], dtype=np.int64)  # noqa: E731
        train_df, val_df, cal_df = ok(self.train_df), ok(self.val_df), ok(self.cal_df)
        used = set(self.train_df["path"]) | set(self.val_df["path"]) | set(self.cal_df["path"])
        self.unreadable = {p: e for p, e in self.images.errors.items() if p in used}
        aug = augmentation(cfg)
        train_ds = ArrayDataset(self.images, rows(train_df), train_df["label"].to_numpy(), aug)
        if cfg.boxes:  # training only: validation and calibration never see boxes
            from zoo.boxes import box_dataset, describe

            boxed, self.boxes_record = box_dataset(train_ds, train_df["path"].tolist(), cfg.boxes, self.dataset.root)
            if self.is_main:
                said = describe(self.boxes_record, cfg.box_weight, cfg.box_warmup,
                                self._resolve_keep(boxed is not None and cfg.box_weight > 0))
                tqdm.write(f"[{cfg.backbone}] {said}")
            train_ds = boxed or train_ds
        return TrainData(train_df, val_df, train_ds,
                         ArrayDataset(self.images, rows(val_df), val_df["label"].to_numpy()),
                         cal_df, ArrayDataset(self.images, rows(cal_df), cal_df["label"].to_numpy()))

    def loaders(self, data: TrainData) -> tuple[Any, Any]:
        cfg = self.cfg
        workers = auto_workers(cfg.workers, self.device)
        common = {"num_workers": workers, "pin_memory": self.device.type == "cuda", "persistent_workers": workers > 0}
        g = torch.Generator().manual_seed(cfg.seed)
        train = DataLoader(data.train_ds, batch_size=self.micro_batch, shuffle=True, generator=g,
                           drop_last=len(data.train_ds) > self.micro_batch, **common)
        val = DataLoader(data.val_ds, batch_size=cfg.batch_size * 2, shuffle=False, **common)
        return self.accelerator.prepare_data_loader(train), self.accelerator.prepare_data_loader(val)

    def build(self, steps_per_epoch: int) -> tuple[BoneClassifier, torch.optim.Optimizer, LrSchedule]:
        """Model, optimizer (Adam, or AdamW without decay on norms and biases) and schedule (StepLR stepped per
        epoch, or linear warm-up + cosine decay stepped per optimizer step): :mod:`zoo.optim`."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # identical initial weights in every process
        model = BoneClassifier.new(
            cfg.backbone, pretrained=cfg.pretrained, weights=_pretrained_file(cfg), img_size=cfg.img_size,
            head_hidden=cfg.head_hidden, dropout=cfg.dropout, mean=cfg.mean, std=cfg.std,
        )
        model = model.to(memory_format=torch.channels_last)
        opt = build_optimizer(cfg, model)
        return model, opt, LrSchedule(cfg, opt, steps_per_epoch)

    def validate(self, model, loader, data: TrainData, calibration: bool = False
                 ) -> tuple[pd.DataFrame, dict[str, float]]:
        """Study-level validation table (id, part, label, prob) and its metrics at 0.5; with ``calibration``, the
        same for the calibration split (``loader`` over ``data.cal_ds``)."""
        ds, frame = (data.cal_ds, data.cal_df) if calibration else (data.val_ds, data.val_df)
        probs = evaluate(model, loader, self.accelerator, len(ds), mean=self.cfg.mean, std=self.cfg.std)
        df = frame[["id", "part", "label"]].copy()
        df["prob"] = probs
        st = aggregate_studies(df, "prob")
        return st, binary_metrics(st["label"].to_numpy(), st["prob"].to_numpy(), 0.5)

    # -- the loop -----------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, Any]:
        cfg, acc = self.cfg, self.accelerator
        if resume and self.is_finished():
            return json.loads((self.out / "metrics.json").read_text()) | {"skipped": "already trained"}
        if not resume and self.is_main:
            self.checkpoint.clear()
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
        acc.wait_for_everyone()
        data = self.prepare_data()
        run = self._start(data, resume)
        tracking.start(acc, self.out, {**self.recorded_config(), "n_train_images": len(data.train_df),
                                       "n_val_images": len(data.val_df), "dataset": self.dataset.name}, cfg.backbone)
        for epoch in range(run.state["epoch"] + 1, cfg.epochs + 1):
            self._epoch(run, data, epoch)
            if cfg.patience and epoch - run.state["best_epoch"] >= cfg.patience:
                self.log(f"early stop: no better val AUC for {cfg.patience} epochs")
                break
        if run.box_loss is not None:  # release the CAM layer's hook before validation and export
            run.box_loss.remove()
            self.boxes_record = {**self.boxes_record, "supervised": run.box_loss.supervised}
        metrics = self.export(run.scored, run.val_loader, data, run.state)
        tracking.finish(acc, metrics)
        return metrics

    def _start(self, data: TrainData, resume: bool) -> _Run:
        """Loaders, model, optimizer, schedule, the weight EMA and the loop's state (restored with ``resume``)."""
        cfg, acc = self.cfg, self.accelerator
        self.pos_weight = cfg.pos_weight if cfg.pos_weight is not None else positive_weight(data.train_df["label"])
        train_loader, val_loader = self.loaders(data)
        model, opt, sched = self.build(steps_per_epoch=math.ceil(len(train_loader) / acc.gradient_accumulation_steps))
        loss_fn = WeightedBCE(self.pos_weight, cfg.label_smoothing).to(acc.device)
        box_loss = None
        if getattr(data.train_ds, "masks", None) is not None:  # + the CAM pointing loss on annotated positives
            from zoo.boxes import BoxLoss

            if cfg.compile:  # also refused by train_all.py before anything is read
                raise ValueError("--boxes cannot train a --compile'd model (its CAM loss needs a double backward); "
                                 "drop --compile")
            loss_fn = box_loss = BoxLoss(loss_fn, model, cfg.box_weight, cfg.box_warmup)
        self.keep = self._resolve_keep(box_loss is not None and cfg.box_weight > 0)
        model, opt = acc.prepare(model, opt)
        ema = None
        if cfg.ema_decay > 0:  # validated and exported instead of the raw weights
            from timm.utils import ModelEmaV3

            ema = ModelEmaV3(acc.unwrap_model(model), decay=cfg.ema_decay, use_warmup=True)
        run = _Run(train_loader, val_loader, model, opt, sched, ema,
                   TrainStep(model, loss_fn, opt, acc, mean=cfg.mean, std=cfg.std, mixup=cfg.mixup), box_loss=box_loss)
        if resume:
            restored = self.checkpoint.restore(acc.unwrap_model(model), opt.optimizer, sched, acc.scaler,
                                               ema=None if ema is None else ema.module)
            if restored is not None:
                # a checkpoint from before --keep kept its best epoch's weights
                run.state = {"steps": 0, "kept_epoch": restored.get("best_epoch", 0), **restored}
                self.log(f"resuming after epoch {run.state['epoch']}")

        def on_step() -> None:  # after each optimizer step
            run.state["steps"] += 1
            sched.after_update()
            if ema is not None:
                ema.update(acc.unwrap_model(model), step=run.state["steps"])

        run.step.on_step = on_step
        return run

    def _epoch(self, run: _Run, data: TrainData, epoch: int) -> None:
        """Train, validate and checkpoint epoch ``epoch``; ``run.state`` records it."""
        cfg, acc, state = self.cfg, self.accelerator, run.state
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 1000 + epoch * 16 + acc.process_index)  # augmentation, dropout
        run.train_loader.set_epoch(epoch)  # the shuffle depends on (seed, epoch) only: resumable, same on every rank
        lr = run.optimizer.param_groups[0]["lr"]
        if run.box_loss is not None:
            run.box_loss.set_epoch(epoch)
        train_loss = train_one_epoch(run.step, run.train_loader, desc=f"{cfg.backbone} {epoch}/{cfg.epochs}",
                                     quiet=cfg.quiet)
        train_s = time.perf_counter() - t0
        run.schedule.after_epoch(epoch)
        if run.ema is not None:
            self._sync_ema(run.ema.module)
        val_st, m = self.validate(run.scored, run.val_loader, data)
        state["train_time_s"] += time.perf_counter() - t0
        auc = m["auc"] if not math.isnan(m["auc"]) else -1.0
        best = auc > state["best_auc"]
        if best:
            state["best_auc"], state["best_epoch"] = auc, epoch
        kept = best if self.keep == "best" else True  # the weights export() loads: best.safetensors
        if kept:
            state["kept_epoch"] = epoch
        state["epoch"] = epoch
        row = {"epoch": epoch, "train_loss": train_loss, "val_auc": m["auc"], "val_kappa": m["kappa"],
               "val_accuracy": m["accuracy"], "val_ece": ece(val_st["label"].to_numpy(), val_st["prob"].to_numpy()),
               "lr": lr, "train_s": round(train_s, 3), "images_per_s": round(len(data.train_ds) / train_s, 2),
               "time_s": round(time.perf_counter() - t0, 3)}
        if run.box_loss is not None:  # the BCE and how well the maps fit the boxes, apart (zoo.boxes.BoxLoss)
            row.update(run.box_loss.epoch_stats(acc))
        tracking.log(acc, row, step=epoch)
        if self.is_main:
            self._append_log(row, epoch)
            self.checkpoint.save(state, acc.unwrap_model(run.model), run.optimizer.optimizer, run.schedule, acc.scaler,
                                 ema=None if run.ema is None else run.ema.module, best=kept)
        acc.wait_for_everyone()
        term = row.get("train_box_term")
        self.log(f"epoch {epoch}/{cfg.epochs} loss {train_loss:.4f}"
                 + ("" if term is None else f" (box term {term:.3f})")
                 + f" val AUC {m['auc']:.4f} kappa {m['kappa']:.3f} ({row['time_s']:.1f}s)")

    def recorded_config(self) -> dict[str, Any]:
        """What was trained, as config.json and the trackers record it: the resolved config without how it ran
        (:data:`RUNTIME_FIELDS`), with the precision and the process count it trained with."""
        acc = self.accelerator
        return {**{k: v for k, v in asdict(self.cfg).items() if k not in RUNTIME_FIELDS}, "keep": self.keep,
                "mixed_precision": precision_name(acc.mixed_precision), "processes": acc.num_processes}

    def _sync_ema(self, module: torch.nn.Module) -> None:
        """Under DDP every process keeps its own EMA, and BatchNorm statistics differ between processes: the main
        process's EMA is given to all, so every shard is validated (and the member exported) with the same weights."""
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast

            with torch.no_grad():
                for t in list(module.parameters()) + list(module.buffers()):
                    t.copy_(broadcast(t.detach().clone(), from_process=0))

    def _append_log(self, row: dict, epoch: int) -> None:
        """metrics.jsonl, rewritten atomically; rows of epochs after ``epoch`` (left by a killed run) are dropped."""
        log = self.out / "metrics.jsonl"
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
        rows = [r for r in rows if r["epoch"] < epoch] + [row]
        write_text(log, "".join(json.dumps(r) + "\n" for r in rows))

    def export(self, model, val_loader, data: TrainData, state: dict) -> dict[str, Any]:
        """The kept epoch's weights (``self.keep``) -> the member folder, with its validation threshold, metrics and
        card."""
        cfg, acc = self.cfg, self.accelerator
        acc.unwrap_model(model).load_state_dict(self.checkpoint.best_weights())
        st, _ = self.validate(model, val_loader, data)
        y, p = st["label"].to_numpy(), st["prob"].to_numpy()
        thr = best_threshold(y, p)
        m = binary_metrics(y, p, thr)
        cal = Calibrator.fit(y, p)  # on the validation studies: applied by predict.py and the demo
        cal_st = None  # the calibration split, predicted by the finished member (after every selection step)
        if len(data.cal_df):
            loader = DataLoader(data.cal_ds, batch_size=cfg.batch_size * 2, shuffle=False,
                                num_workers=auto_workers(cfg.workers, self.device))
            cal_st, _ = self.validate(model, acc.prepare_data_loader(loader), data, calibration=True)
        net: BoneClassifier = acc.unwrap_model(model)
        metrics = {
            "backbone": cfg.backbone, "val_auc": m["auc"], "val_kappa": m["kappa"], "val_accuracy": m["accuracy"],
            "val_sensitivity": m["sensitivity"], "val_specificity": m["specificity"], "threshold": thr,
            "best_epoch": state["best_epoch"], "kept_epoch": state["kept_epoch"],
            "epochs_run": state["epoch"],
            "params": sum(p.numel() for p in net.parameters()), "train_time_s": round(state["train_time_s"], 2),
            "n_val_studies": m["n"], "val_ece": ece(y, p), "val_brier": brier(y, p),
            "n_calibration_studies": 0 if cal_st is None else len(cal_st),
        }
        if self.is_main:
            if (loc := self._val_localisation(net, data)) is not None:
                metrics["val_localisation"] = loc
            train_st = studies(self.dataset.train)
            net.threshold, net.metrics, net.calibration = thr, metrics, cal.to_dict()
            net.training_config = {
                **self.recorded_config(),
                "dataset_name": self.dataset.name, "dataset_layout": self.dataset.layout,
                "grouping": self.dataset.grouping,  # "patient" | "study": what validation splits and folds kept whole
                "n_train_images": len(data.train_df), "n_val_images": len(data.val_df), "n_val_studies": m["n"],
                "n_unlabelled_studies": int(train_st["label"].isna().sum()),
                "calibration_fraction": self.calibration_fraction,  # as resolved (None in the flags: the default)
                "n_calibration_studies": 0 if cal_st is None else len(cal_st),
                # the share actually held out: one fold of round(1 / F), so not F itself (0.3 -> about 1/3)
                "calibration_share": calibration_share(self.dataset.train, self.cal_df),
                "calibration_grouping": self.dataset.grouping,
                "semi_supervised": self.pseudo_record, "pos_weight": round(self.pos_weight, 4),
                "unreadable_images": len(self.unreadable), "device": self.device.type,
                "boxes": self.boxes_record and {**self.boxes_record, "weight": cfg.box_weight,
                                                "warmup": cfg.box_warmup, "loss": BOX_LOSS,
                                                "sharpness": SHARPNESS},
            }
            net.save_member(self.out)
            write_csv(st, self.out / "val_predictions.csv")
            if cal_st is not None:
                write_csv(cal_st, self.out / "calibration_predictions.csv")
            else:  # a member retrained without the split must not keep the last run's
                (self.out / "calibration_predictions.csv").unlink(missing_ok=True)
            if cfg.export:
                self._export_graphs(data)
            plot_curves(self.out / "metrics.jsonl", self.out / "curves.png", cfg.backbone)
            write_text(self.out / "metrics.json", json.dumps(metrics, indent=2))  # last: marks the member complete
            self.checkpoint.clear()
        acc.wait_for_everyone()
        return metrics

    def _val_localisation(self, net: BoneClassifier, data: TrainData) -> dict | None:
        """Where the finished member's Grad-CAM points on its abnormal validation images that the ``--boxes`` file
        has boxes for (none without ``--boxes``: a data folder's own annotations.coco.json is not scored here, it is
        predict.py's ``--evaluate --annotations``): the pointing game and energy share of
        :func:`zoo.localisation.validation_localisation` on at most its ``limit`` images, with the file's name; None
        without boxes for them. Only scored, so an error (out of memory included) only says so: the member is kept."""
        import warnings

        from zoo.localisation import load_annotations, validation_localisation

        if not self.cfg.boxes:
            return None
        try:
            coco = load_annotations(self.cfg.boxes, flag="--boxes")
            if self.accelerator.num_processes > 1:  # the CAMs' backward on a copy: never through DDP's gradient hooks
                import copy

                net = copy.deepcopy(net)
            rows = np.asarray(data.val_ds.rows)
            record = validation_localisation(net, lambda idx: self.images.read(rows[idx]),  # pread, not the map
                                             data.val_df["path"].tolist(), data.val_df["label"].to_numpy(), coco,
                                             self.dataset.root)
        except Exception as exc:  # noqa: BLE001 (scored only: nothing of it may cost the trained member)
            warnings.warn(f"[{self.cfg.backbone}] validation localisation failed, the member is saved without it: "
                          f"{type(exc).__name__}: {exc}", stacklevel=2)
            return None
        if record is not None:
            record["file"] = Path(self.cfg.boxes).name
            self.log(f"validation localisation on {record['images']} abnormal images with boxes: pointing game "
                     f"{record['pointing']:.3f} (chance {record['pointing_chance']:.3f}), energy share "
                     f"{record['energy']:.3f} (chance {record['energy_chance']:.3f})")
        return record

    def _export_graphs(self, data: TrainData) -> None:
        """The saved member's ONNX graphs, int8 calibrated and checked on its validation images (zoo.onnx), and their
        scores of its validation and calibration images (zoo.graph_scores); a failure leaves a complete member that
        predicts on PyTorch (or, when only the scores failed, on its graphs under the drift rule), and says how to
        export it later."""
        from zoo.graph_scores import describe_scores, store
        from zoo.onnx import describe_export, export_member, export_record

        retry = f"bone-zoo export {self.out} --onnx --int8 --calibration-data DIR"
        val = self.images.read(data.val_ds.rows)
        t0 = time.perf_counter()
        try:
            record = export_member(self.out, val, data.val_df)
        except (ImportError, RuntimeError, ValueError, OSError) as exc:
            tqdm.write(f"[{self.cfg.backbone}] warning: ONNX export failed ({_first_line(exc)}); the member is saved "
                       f"and predicts on PyTorch. Retry: {retry}", file=sys.stderr)
            return
        t1 = time.perf_counter()
        try:  # the int8 graph's check on each other runtime, and each runtime's scores
            cal = None if data.cal_ds is None else (self.images.read(data.cal_ds.rows), data.cal_df)
            scores = store(self.out, {"val": (val, data.val_df), "calibration": cal})
        except (ImportError, RuntimeError, ValueError, OSError) as exc:
            self.log(f"exported {describe_export(record)} in {t1 - t0:.1f}s")
            tqdm.write(f"[{self.cfg.backbone}] warning: scoring the validation studies with the graphs failed "
                       f"({_first_line(exc)}); a triage on them is certified only within the drift rule. Retry: "
                       f"{retry}", file=sys.stderr)
            return
        self.log(f"exported {describe_export(export_record(self.out) or record)} in {t1 - t0:.1f}s")
        self.log(f"{describe_scores(scores)} in {time.perf_counter() - t1:.1f}s")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def augmentation(cfg: TrainConfig):
    """The training augmentation ``cfg`` asks for (what training and the --budget-minutes speed measurement run)."""
    return train_augment(cfg.rotation, cfg.hflip, cfg.translate, size=cfg.img_size, crop_scale=cfg.crop_scale,
                         brightness=cfg.brightness, contrast=cfg.contrast, gamma=cfg.gamma_jitter)


def plot_curves(jsonl: Path, path: Path, title: str) -> None:
    """Training loss and validation AUC per epoch; with a box loss, its BCE apart and, below, the box term (its own
    axis: a different quantity). matplotlib's Figure API: no global backend switch."""
    from matplotlib.figure import Figure

    df = pd.read_json(jsonl, lines=True)
    boxed = "train_box_term" in df and df["train_box_term"].notna().any()  # --boxes (zoo.boxes.BoxLoss.epoch_stats)
    fig = Figure(figsize=(5, 4.6 if boxed else 3), dpi=110)
    ax, *below = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1)) if boxed else [fig.subplots()]
    ax.plot(df["epoch"], df["train_loss"], "o-", label="train loss" + (" (BCE + weight x box term)" if boxed else ""))
    if boxed:
        if "train_bce" in df:  # not in a log of bdf0b63, whose term was also in other units
            ax.plot(df["epoch"], df["train_bce"], ".:", color="C0", label="train BCE")
        below[0].plot(df["epoch"], df["train_box_term"], "^--", color="C2", label="box term")
        below[0].set(xlabel="epoch", ylabel="box term\n(map spread units)")
        below[0].set_ylim(bottom=0)
    ax.set(xlabel="" if boxed else "epoch", ylabel="loss" if boxed else "weighted BCE", title=title)
    ax2 = ax.twinx()
    ax2.plot(df["epoch"], df["val_auc"], "s-", color="C1", label="val AUC")
    ax2.set(ylabel="val AUC (study)", ylim=(0, 1))
    fig.legend(loc="lower center", ncol=4 if boxed else 2, fontsize=7)
    fig.tight_layout(rect=(0, 0.05 if boxed else 0.07, 1, 1))  # room for the legend under the axis label
    save_figure(fig, path)
