"""Save and restore everything a resume needs: model (and EMA) weights, optimizer, scheduler, grad scaler, RNG state.

Tensors go to safetensors, the rest to JSON; never a pickle. Layout of a checkpoint folder::

    checkpoint/
      epoch-0003/   model.safetensors  optimizer.safetensors  [ema.safetensors]  rng.safetensors  state.json
      best.safetensors                 # weights of the epoch kept so far (--keep: best validation AUC, or last)
      LATEST                           # "epoch-0003": the last complete epoch

An epoch folder is written under a temporary name and renamed when complete; ``LATEST`` is replaced atomically after
it, so a run killed at any instant resumes from the last complete epoch.

A resume continues only what was started: each epoch folder (and, once finished, the member folder) holds
``fingerprint.json``, the resolved config, a hash of the data (image paths, sizes, mtimes, labels) it was trained
with and, with ``--boxes``, the boxes file's SHA-256 and the box settings; :func:`resume_changes` says what differs
now, and ``train_all.py --resume`` refuses a mismatch naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from zoo.atomic import atomic_path, durable_replace, write_text
from zoo.config import RUNTIME_FIELDS
from zoo.runtime import precision_name

FINGERPRINT_FILE = "fingerprint.json"
SPEED_FIELDS = ("micro_batch", "compile")  # change how fast a member trains, not what it learns: not compared
LEGACY_BOX_LOSS = "grad-cam energy share"  # the --boxes loss of members that did not record theirs


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {f"{i}.{k}": v.detach().cpu().contiguous() for i, st in sd["state"].items() for k, v in st.items()
               if isinstance(v, torch.Tensor)}
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class CheckpointMismatch(RuntimeError):
    """A checkpoint whose optimizer or schedule state does not fit the ones this bone-zoo builds."""


def _check_fits(epoch_dir: Path, optimizer: torch.optim.Optimizer, meta: dict, scheduler) -> None:
    """Refuse, before anything is loaded, an epoch whose optimizer param groups (their number and sizes) or
    schedule state (its keys) differ from those built now: an older bone-zoo built two param groups for adamw with
    weight decay 0 and kept torch's StepLR state, which would fail with a traceback or restore the wrong rates."""
    saved = [len(g.get("params", [])) for g in meta.get("optimizer", {}).get("param_groups", [])]
    built = [len(g["params"]) for g in optimizer.param_groups]
    why = None
    if saved != built:
        why = f"optimizer parameter groups of {saved} parameters, this version builds {built}"
    elif set(meta.get("scheduler") or {}) != set(scheduler.state_dict()):
        why = "its learning-rate schedule state is of another kind than this version builds"
    if why:
        raise CheckpointMismatch(f"{epoch_dir}: checkpoint from an older bone-zoo ({why}): start a new --out or "
                                 "retrain (run without --resume)")


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    meta = {"numpy": [kind, keys.tolist(), pos, has_gauss, gauss], "python": _listify(random.getstate())}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(_tuplify(meta["python"]))


def _listify(x):
    return [_listify(v) for v in x] if isinstance(x, tuple | list) else x


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def _state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


class Checkpoint:
    """The ``checkpoint/`` folder of one member while it trains."""

    def __init__(self, folder: str | Path, fingerprint: dict | None = None):
        self.folder = Path(folder)
        self.fingerprint = fingerprint  # what is being trained (see :func:`fingerprint`): saved with every epoch

    @property
    def latest(self) -> Path | None:
        """The last complete epoch folder, or None."""
        pointer = self.folder / "LATEST"
        if not pointer.is_file():
            return None
        d = self.folder / pointer.read_text().strip()
        return d if (d / "state.json").is_file() else None

    def exists(self) -> bool:
        return self.folder.exists()

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def save(self, state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
             scaler=None, ema: torch.nn.Module | None = None, best: bool = False) -> Path:
        """Write epoch ``state["epoch"]`` (and ``best.safetensors`` when ``best``); returns its folder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{int(state['epoch']):04d}"
        tmp = self.folder / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        weights = _state_dict(model)
        save_file(weights, str(tmp / "model.safetensors"))
        if ema is not None:
            save_file(_state_dict(ema), str(tmp / "ema.safetensors"))
        opt_tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        rng_tensors, rng_meta = rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        meta = {**state, "optimizer": opt_meta, "scheduler": scheduler.state_dict(), "rng": rng_meta,
                "scaler": scaler.state_dict() if scaler is not None else None}
        (tmp / "state.json").write_text(json.dumps(meta, default=float))
        if self.fingerprint is not None:
            (tmp / FINGERPRINT_FILE).write_text(json.dumps(self.fingerprint))
        if best:  # the weights of the epoch kept (--keep: the best validation AUC's, or the last): what it exports
            with atomic_path(self.folder / "best.safetensors") as f:
                save_file(_state_dict(ema) if ema is not None else weights, str(f))
        final = self.folder / name
        shutil.rmtree(final, ignore_errors=True)
        durable_replace(tmp, final)  # every epoch file flushed before LATEST can name it
        write_text(self.folder / "LATEST", name)
        for old in self.folder.glob("epoch-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, scaler=None,
                ema: torch.nn.Module | None = None) -> dict[str, Any] | None:
        """Load the last complete epoch into the given objects (RNG included); its state dict, or None if none."""
        d = self.latest
        if d is None:
            return None
        meta = json.loads((d / "state.json").read_text())
        _check_fits(d, optimizer, meta, scheduler)
        model.load_state_dict(load_file(str(d / "model.safetensors")))
        if ema is not None and (d / "ema.safetensors").is_file():
            ema.load_state_dict(load_file(str(d / "ema.safetensors")))
        _load_optimizer(optimizer, load_file(str(d / "optimizer.safetensors")), meta["optimizer"])
        scheduler.load_state_dict(meta["scheduler"])
        if scaler is not None and meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        set_rng_state(load_file(str(d / "rng.safetensors")), meta["rng"])
        return {k: v for k, v in meta.items() if k not in ("optimizer", "scheduler", "scaler", "rng")}

    def best_weights(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.folder / "best.safetensors"))

    def stored_fingerprint(self) -> dict | None:
        """The fingerprint saved with the last complete epoch (None: no epoch, or saved without one)."""
        d = self.latest
        return _read_json(d / FINGERPRINT_FILE) if d is not None else None


def _read_json(f: Path) -> dict | None:
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return None


def data_fingerprint(images, root: str | Path | None = None, pseudo=None) -> dict:
    """A hash of what a member learns from: every row of the image table (path, id, label and any other column),
    each image's size and mtime, and the pseudo-labelled rows of ``--semi-supervised``; with the row count and the
    data folder, to say what changed."""
    import pandas as pd

    table = images if pseudo is None or not len(pseudo) else pd.concat([images, pseudo.assign(pseudo=1)])
    table = table.astype(str)
    table = table.sort_values(["path", *sorted(c for c in table.columns if c != "path")], kind="stable")
    h = hashlib.sha256()
    for row in table.to_dict("records"):
        try:
            st = os.stat(row["path"])
            stat = [st.st_size, st.st_mtime_ns]
        except OSError:
            stat = [None, None]
        h.update(json.dumps([sorted(row.items()), stat]).encode() + b"\n")
    return {"sha256": h.hexdigest(), "images": int(len(images)), "pseudo_labelled": int(len(table) - len(images)),
            "root": str(Path(root).resolve()) if root is not None else None}


def boxes_fingerprint(config) -> dict | None:
    """What ``--boxes`` trains from: the file's name and SHA-256 (:func:`zoo.boxes.file_record`; ``sha256`` None
    when it cannot be read) with ``--box-weight``, ``--box-warmup`` and the loss (its name and sharpness); None
    without ``--boxes``. The config holds only the file's path: the same path with other boxes in it is another
    training."""
    path = getattr(config, "boxes", None)
    if not path:
        return None
    from zoo.boxes import BOX_LOSS, SHARPNESS, file_record

    try:
        record = file_record(path)
    except (OSError, ValueError):  # unreadable, or a folder without YOLO labels
        record = {"file": Path(path).name, "sha256": None}
    return {**record, "weight": config.box_weight, "warmup": config.box_warmup, "loss": BOX_LOSS,
            "sharpness": SHARPNESS}


def fingerprint(config, data: dict) -> dict:
    """What a member is trained from: the resolved config (a ``TrainConfig``; fields that only say where or how fast
    it runs left out), :func:`data_fingerprint` and :func:`boxes_fingerprint`."""
    cfg = {k: v for k, v in asdict(config).items() if k not in RUNTIME_FIELDS + SPEED_FIELDS}
    return {"config": json.loads(json.dumps(cfg, default=str)), "data": data, "boxes": boxes_fingerprint(config)}


def _comparable(cfg: dict) -> dict:
    """A fingerprint's config as compared: the precision in the one vocabulary (an older bone-zoo recorded
    ``--mixed-precision no`` as "no", now "fp32")."""
    out = dict(cfg)
    if isinstance(out.get("mixed_precision"), str):
        out["mixed_precision"] = precision_name(out["mixed_precision"])
    return out


def resume_changes(member_dir: str | Path, current: dict) -> list[str]:
    """What differs between how ``member_dir`` was (being) trained and ``current`` (a :func:`fingerprint`), one
    phrase per change ("epochs 1 -> 2", "the data ..."); [] when nothing does or there is nothing to resume."""
    member_dir = Path(member_dir)
    ck = Checkpoint(member_dir / "checkpoint")
    stored = ck.stored_fingerprint() if ck.latest is not None else _read_json(member_dir / FINGERPRINT_FILE)
    legacy = stored is None  # its config, below, does not hold the --boxes path: on or off is the boxes' to say
    if stored is None:
        if ck.latest is None and not (member_dir / "metrics.json").is_file():
            return []  # nothing trained here yet
        cfg = (_read_json(member_dir / "config.json") or {}).get("training")  # trained before fingerprints
        if not cfg:
            return []
        # recorded as resolved, not as the flag: not comparable (config.json's "boxes" is what --boxes matched)
        resolved = ("mixed_precision", "pos_weight", "boxes", "keep")
        box = cfg.get("boxes")
        stored = {"config": {k: v for k, v in cfg.items() if k in current["config"] and k not in resolved},
                  "data": None, "boxes": box and {"file": box.get("file"), "sha256": box.get("sha256"),
                                                  "weight": box.get("weight"), "warmup": box.get("warmup"),
                                                  **{k: box[k] for k in ("loss", "sharpness") if k in box}}}
    old, new = _comparable(stored.get("config", {})), _comparable(current["config"])
    changes = [f"{k} {old[k]!r} -> {new[k]!r}" for k in sorted(set(old) & set(new)) if old[k] != new[k]]
    changes += _boxes_changes(stored, current.get("boxes"), legacy)
    was, now = stored.get("data"), current["data"]
    if was is not None and was.get("sha256") != now.get("sha256"):
        where = (f"{was.get('root')} -> {now.get('root')}, " if was.get("root") != now.get("root") else
                 f"{now.get('root')}, ")
        changes.append(f"the data ({where}{was.get('images')} -> {now.get('images')} images; paths, labels, file "
                       f"sizes or times differ)")
    return changes


def _boxes_changes(stored: dict, now: dict | None, legacy: bool = False) -> list[str]:
    """What differs in the ``--boxes`` file a member was trained with (``stored``, a fingerprint) and ``now``
    (:func:`boxes_fingerprint`): its content (or that it cannot be read now), or nothing known of it (a fingerprint
    from before boxes were hashed). Its path, weight and warm-up are the config's, compared with it; for a member
    from before fingerprints (``legacy``: its config has no path), boxes turned on or off are said here."""
    if "boxes" not in stored:  # a fingerprint written before the boxes file's content was part of it
        return [] if now is None else [f"boxes {now['file']}: the checkpoint does not record which boxes it was "
                                       "trained with (an older bone-zoo)"]
    was = stored["boxes"]
    if legacy and (was is None) != (now is None):
        return [f"boxes: trained without --boxes, now --boxes {now['file']}" if was is None else
                f"boxes: trained with --boxes {was.get('file')}, now without"]
    if was is None or now is None:
        return []
    changes = []
    old_loss = (was.get("loss", LEGACY_BOX_LOSS), was.get("sharpness"))  # a member from before the loss was recorded
    if old_loss != (now.get("loss"), now.get("sharpness")):
        changes.append(f"the box loss ({old_loss[0]}" + (f", sharpness {old_loss[1]:g}" if old_loss[1] else "") +
                       f" -> {now.get('loss')}, sharpness {now.get('sharpness'):g}): another training")
    if was.get("sha256") == now["sha256"] and now["sha256"] is not None:
        return changes
    if now["sha256"] is None:
        return changes + [f"the boxes file ({was.get('file')} -> {now['file']}: unreadable now, so it cannot be "
                          f"compared with the one trained with, sha256 {str(was.get('sha256'))[:12]})"]
    return changes + [f"the boxes file ({was.get('file')} -> {now['file']}: its content differs, sha256 "
                      f"{str(was.get('sha256'))[:12]} -> {str(now['sha256'])[:12]})"]
