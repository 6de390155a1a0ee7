"""Prediction over large image lists: in chunks, sharded over processes, resumable.

``predict.py`` scores its test images chunk by chunk (``--chunk-size`` images in their table order): each chunk is
decoded (its own cache entry), scored by every member on its backend (:meth:`zoo.ensemble.Ensemble.predict_images`)
and released before the next, so memory does not grow with the archive beyond the per-image probability table.

Under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1) chunk ``i`` is scored by process ``i mod N``; one
process scores all of them, with no process group. Chunk boundaries do not depend on the number of processes, so
every image is scored in the same batches however many there are. Each process writes each chunk it finishes,
atomically, to ``OUTPUT.parts/chunk-NNNNNN.npz`` (per-image probabilities, unreadable files, the fingerprint's
digest); the main process first writes ``manifest.json`` there, the fingerprint of everything the probabilities
depend on (:func:`fingerprint`: each member's weights, backend and graph file; the image list with each file's
size and mtime; TTA; the PyTorch members' precision; the chunk size; the versions of the code and runtimes).
Then every process's chunks are gathered once onto the main process (:func:`accelerate.utils.gather_object`, on
NCCL or gloo), which checks that each chunk arrived exactly once and alone writes the CSV, report and CAMs.

A kill loses at most the chunks in flight (one per process). ``--resume`` reuses the finished chunks of a parts
folder whose manifest matches and scores the rest; a mismatch is refused with what differs, and without
``--resume`` an existing parts folder is refused (never silently reused). ``predict.py`` removes the folder once the
CSV is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from zoo.atomic import atomic_path, write_text

DEFAULT_CHUNK_SIZE = 4096  # images per chunk: ~0.3 GB decoded at 256 px, ~1 GB at 512 px
MANIFEST = "manifest.json"
FINGERPRINT_VERSION = 2  # 2: graph content, versions, GPU batch size


class PartsError(Exception):
    """A parts folder that cannot be used as asked (exists without --resume, or another prediction's)."""


@dataclass
class Processes:
    """This process's place among the prediction's processes: ``rank`` of ``world`` (1: no process group)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, items: list) -> list:
        """Every process's ``items`` concatenated, on every process (:func:`accelerate.utils.gather_object`)."""
        if self.world == 1:
            return list(items)
        from accelerate.utils import gather_object

        return gather_object(list(items))

    def broadcast(self, obj):
        """The main process's ``obj`` on every process."""
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj])[0]

    def agree(self, problem: str | None) -> str | None:
        """Every process's ``problem`` (None: it can go on), on every process: None when none has one, else each
        distinct problem once, prefixed with the ranks that had it unless every process did (a collective call:
        every process must make it, so that none goes on while another one stopped)."""
        if self.world == 1:
            return problem
        said: dict[str, list[int]] = {}
        for rank, p in self.gather([(self.rank, problem)]):
            if p is not None:
                said.setdefault(p, []).append(rank)
        if not said:
            return None
        return "; ".join(p if len(ranks) == self.world else
                         f"[rank{'s' if len(ranks) > 1 else ''} {','.join(map(str, ranks))}] {p}"
                         for p, ranks in said.items())

    def close(self) -> None:
        """Leave the process group (after the last collective call)."""
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def processes(device: str = "auto") -> tuple[Processes, str]:
    """This process's :class:`Processes` and the device it predicts on. One process (no ``WORLD_SIZE`` > 1 in the
    environment: not launched by ``accelerate launch`` / ``torchrun``): ``device`` as given, no process group, and
    neither torch nor accelerate is imported. Several: accelerate's ``PartialState`` joins the group (NCCL on GPUs,
    gloo on CPU) and ``auto`` becomes this process's own device (``cuda:LOCAL_RANK``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes(), device
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")
    return Processes(state.process_index, state.num_processes), str(state.device) if device == "auto" else device


def chunks(n: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[slice]:
    """The chunks of a table of ``n`` images, in its order: ``chunk_size`` rows each (the last one shorter), the
    same whatever the number of processes. Each chunk's path set is its decoded-image cache entry."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, not {chunk_size}")
    return [slice(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]


def parts_dir(output: str | Path) -> Path:
    """The parts folder of a prediction written to ``output``: ``OUTPUT.parts`` beside it."""
    output = Path(output)
    return output.with_name(output.name + ".parts")


def _weights_hash(m) -> str:
    recorded = m.config.get("weights_sha256")
    if recorded:  # verified against the file when the member was loaded (zoo.members.read_verified)
        return recorded
    weights = m.folder / "model.safetensors"
    if not weights.is_file():  # a member scored without PyTorch weights (graphs only, or a test's stand-in): what it
        weights = m.folder / "config.json"  # is known by; its graph file's content is in the fingerprint too
    with open(weights, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fingerprint(ens, paths: list[str], *, tta: bool, chunk_size: int, batch_size: int = 0) -> dict:
    """What the per-image probabilities of a chunked prediction depend on (a resumed run must match it): each
    member's weights, image size, backend and the content of the graph file that backend runs (a re-export between
    the kill and the resume changes it); the image list (each file's size and mtime); TTA; the PyTorch members'
    precision; the chunk size; the versions of bone-zoo and of each runtime used (onnxruntime, openvino, torch).

    The batch size counts only where PyTorch members run on an accelerator (cuDNN picks its algorithms by batch
    shape, and half-precision autocast rounds what they give): the auto batch size resolved there. On CPU, and on
    the graph backends, it is left out, so a run resumed with another ``--batch-size`` there is not refused."""
    from zoo.data.cache import hash_files

    h = hashlib.sha256()
    hash_files(h, [os.path.abspath(p) for p in paths])
    members, runtimes = [], {"bone-zoo"}
    for m in ens.members:
        backend = ens.choice(m).backend
        members.append({"name": m.name, "weights_sha256": _weights_hash(m), "img_size": m.img_size,
                        "backend": backend, "graph_sha256": _graph_hash(m.folder, backend)})
        runtimes.add(RUNTIMES.get(backend.split("-")[0], "onnxruntime"))
    fp = {"version": FINGERPRINT_VERSION, "members": members, "images": {"n": len(paths), "sha256": h.hexdigest()},
          "tta": bool(tta), "precision": _torch_precision(ens), "chunk_size": int(chunk_size),
          "versions": {name: _version(name) for name in sorted(runtimes)}}
    if fp["precision"] is not None and ens.device.type != "cpu":
        from zoo.inference import auto_batch_size

        fp["batch_size"] = auto_batch_size(batch_size, ens.device)
    return fp


RUNTIMES = {"torch": "torch", "onnx": "onnxruntime", "openvino": "openvino"}  # backend family -> distribution


def _graph_hash(folder: Path, backend: str) -> str | None:
    """SHA-256 of the graph file ``backend`` runs (None for torch, whose weights are hashed already)."""
    if backend == "torch":
        return None
    from zoo.backends import GRAPHS
    from zoo.onnx import graph_path

    with open(graph_path(folder, GRAPHS[backend]), "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for name in (dist, f"{dist}-gpu") if dist == "onnxruntime" else (dist,):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def _torch_precision(ens) -> str | None:
    """The precision the PyTorch members compute in on this process's device (``auto`` resolved: bf16 on one
    machine, fp32 on another), None when every member runs on a graph. The device itself is not part of the
    fingerprint: a run resumed with another number of processes names other devices for the same computation."""
    if all(ens.choice(m).runner is not None for m in ens.members):
        return None
    from zoo.runtime import resolve_precision

    return resolve_precision(ens.precision, ens.device)


def digest(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def open_parts(parts: Path, fp: dict, resume: bool, why: dict[str, str] | None = None) -> str:
    """Check (``resume``) or create the parts folder for fingerprint ``fp``; returns its digest, which every part
    records. Raises :class:`PartsError` with what to do; ``why`` (member name -> why its backend was chosen) is said
    where a member's backend differs."""
    if parts.exists() and not (parts / MANIFEST).exists() and not any(parts.glob("chunk-*.npz")):
        shutil.rmtree(parts)  # an older run killed between its mkdir and its manifest: nothing in it to resume
    if parts.exists():
        if not resume:
            raise PartsError(f"{parts} holds the finished chunks of an interrupted prediction: add --resume to "
                             f"continue it, or remove the folder to start over")
        try:
            old = json.loads((parts / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise PartsError(f"{parts / MANIFEST}: unreadable ({exc}); remove {parts} to start over") from None
        if old != fp:
            differ = sorted(k for k in fp.keys() | old.keys() if old.get(k) != fp.get(k))
            raise PartsError(f"cannot resume from {parts}: the interrupted prediction differs in "
                             f"{', '.join(differ)}{_member_changes(old, fp, why or {})} (members' weights, graphs "
                             f"or backends, the image list, --tta, --precision, --chunk-size, --batch-size on a GPU "
                             f"or the installed versions); rerun with the options it had, or remove {parts} to "
                             "start over")
    else:  # the folder appears with its manifest or not at all: a kill here leaves nothing a rerun refuses
        parts.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{parts.name}.", dir=parts.parent))
        try:
            write_text(tmp / MANIFEST, json.dumps(fp, indent=1, sort_keys=True))
            os.rename(tmp, parts)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return digest(fp)


def _member_changes(old: dict, fp: dict, why: dict[str, str]) -> str:
    """``: member X backend onnx-int8 -> torch (auto: CAMs need the PyTorch network), ...`` for the members whose
    fields differ, "" when the members are the same."""
    before = {m.get("name"): m for m in old.get("members") or [] if isinstance(m, dict)}
    said = []
    for m in fp["members"]:
        o = before.get(m["name"])
        if o is None:
            said.append(f"member {m['name']} is new")
            continue
        for k in sorted(m.keys() | o.keys()):
            if o.get(k) != m.get(k):
                if k == "backend":
                    said.append(f"member {m['name']} backend {o.get(k)} -> {m[k]}"
                                + (f" ({why[m['name']]})" if m["name"] in why else ""))
                else:
                    said.append(f"member {m['name']} {k} changed")
    said += [f"member {name} is gone" for name in before.keys() - {m["name"] for m in fp["members"]}]
    return ": " + "; ".join(said) if said else ""


def _listing(images: pd.DataFrame) -> str:
    """Digest of a test table's study ids, file names and sizes, in order (not the folders: another node may mount
    the data elsewhere; the sizes tell a stale copy of an image on one node)."""
    names = images["id"].astype(str) + "/" + images["path"].map(
        lambda p: f"{os.path.basename(p)}:{os.stat(p).st_size if os.path.exists(p) else -1}")
    return hashlib.sha256("\0".join(names).encode()).hexdigest()


def _part(parts: Path, i: int) -> Path:
    return parts / f"chunk-{i:06d}.npz"


def write_part(path: Path, probs: np.ndarray, errors: dict[str, str], key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)  # another node's folder (no shared file system)
    with atomic_path(path) as tmp:
        np.savez(tmp, probs=probs, errors=np.array(json.dumps(errors)), digest=np.array(key))


def read_part(path: Path, key: str, shape: tuple[int, int]) -> tuple[np.ndarray, dict[str, str]] | None:
    """A finished chunk written under fingerprint digest ``key`` with ``shape`` probabilities; None if absent,
    damaged or another prediction's (it is then scored again)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["digest"]) != key or z["probs"].shape != shape:
                return None
            return z["probs"].astype(np.float64), json.loads(str(z["errors"]))
    except Exception:  # noqa: BLE001 -- damaged in any way (truncated zip, bad header, ...): scored again
        return None


def predict_chunked(ens, images: pd.DataFrame, parts: Path, procs: Processes, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                    resume: bool = False, tta: bool = False, quiet: bool = False,
                    note: Callable[[str], None] | None = None,
                    **kwargs) -> tuple[pd.DataFrame, dict[str, str]] | None:
    """:meth:`Ensemble.predict_images` of ``images`` chunk by chunk, sharded over ``procs``, each chunk written to
    ``parts`` (see the module docstring). On the main process: the image table with one probability column per
    member and ``{path: error}`` of the unreadable files; None on the others. ``kwargs`` go to ``predict_images``
    (batch size, workers, cache). Raises :class:`PartsError` (on every process) where ``parts`` cannot be used."""
    bounds = chunks(len(images), chunk_size)
    images = images.reset_index(drop=True)
    names = ens.names
    key = problem = None
    if procs.is_main:
        try:
            fp = fingerprint(ens, images["path"].tolist(), tta=tta, chunk_size=chunk_size,
                             batch_size=kwargs.get("batch_size", 0))
            key = open_parts(parts, fp, resume, {m.name: ens.choice(m).why for m in ens.members})
        except PartsError as exc:
            problem = str(exc)
        except Exception as exc:  # noqa: BLE001 -- the others would wait in broadcast for a key that never comes
            if procs.world == 1:
                raise
            problem = f"cannot prepare {parts}: {type(exc).__name__}: {exc}"
    listing = _listing(images) if procs.world > 1 else None  # (one stat per image: only where it is compared)
    key, problem, main_listing = procs.broadcast((key, problem, listing))
    if problem:
        raise PartsError(problem)
    if procs.world > 1:  # the main process assembles every chunk onto its own table: the tables must be the same
        mismatch = None if listing == main_listing else (
            f"lists other test images than the main process ({len(images)} images, in another order or set)")
        if (problem := procs.agree(mismatch)) is not None:
            raise PartsError(f"{problem}: every process must see the same test images (the same --data, "
                             f"unchanged, on every node)")
        (parts / f"error-rank{procs.rank}.txt").unlink(missing_ok=True)  # an earlier failed run's, not this one's
    n_chunks = len(bounds)
    done, reused = [], 0
    rounds = range(-(-n_chunks // procs.world))  # round r: chunk r * N + rank on each process
    bar = tqdm(rounds, desc="chunks", unit="chunk" if procs.world == 1 else "round", leave=False,
               disable=True if quiet or not procs.is_main else None)
    for r in bar:
        i, failed = r * procs.world + procs.rank, None
        if i < n_chunks:
            rows = images.iloc[bounds[i]]
            path = _part(parts, i)
            try:
                got = read_part(path, key, (len(rows), len(names))) if resume else None
                if got is None:
                    img, errors = ens.predict_images(rows, tta=tta, quiet=quiet or not procs.is_main, **kwargs)
                    got = img[names].to_numpy(dtype=np.float64), errors
                    write_part(path, *got, key)
                else:
                    reused += 1
                done.append((i, *got))
            except Exception as exc:  # noqa: BLE001 -- sharded: said and agreed on below, no process left waiting
                if procs.world == 1:
                    raise
                trace = parts / f"error-rank{procs.rank}.txt"  # on this process's node
                try:
                    trace.parent.mkdir(parents=True, exist_ok=True)  # another node's folder (no shared file system)
                    write_text(trace, traceback.format_exc())
                except OSError:
                    trace = None
                failed = (f"chunk {i} (images {bounds[i].start}-{bounds[i].stop - 1}): {type(exc).__name__}: "
                          f"{exc}" + (f" (traceback in {trace})" if trace else ""))
        # every round, every process: one that failed stops all of them after the round, not the others waiting
        # for its chunks in the gather below (or a launcher's timeout); what finished stays for --resume
        if procs.world > 1 and (problem := procs.agree(failed)) is not None:
            raise PartsError(f"{problem}; the finished chunks are kept in {parts}: fix the cause and rerun with "
                             f"--resume to score only the rest")
    gathered = procs.gather(done)
    reused = sum(procs.gather([reused]))
    if not procs.is_main:
        return None
    if resume and note is not None:
        note(f"--resume: {reused} of {n_chunks} chunk(s) were finished in {parts}; "
             f"scored the other {n_chunks - reused}")
    order = sorted(i for i, *_ in gathered)
    if order != list(range(n_chunks)):
        raise RuntimeError(f"gathered chunks {order} of {n_chunks}: a chunk missing or repeated")
    probs = np.concatenate([p for _, p, _ in sorted(gathered, key=lambda g: g[0])]) if gathered else \
        np.zeros((0, len(names)))
    out = images.copy()
    for j, name in enumerate(names):
        out[name] = probs[:, j]
    errors = {}
    for _, _, e in sorted(gathered, key=lambda g: g[0]):
        errors.update(e)
    return out, errors
