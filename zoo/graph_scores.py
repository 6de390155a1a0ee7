"""The scores each member's exported graphs give its own validation and calibration studies, on the runtimes
``--backend auto`` may run them on, stored beside the torch path's predictions (issue 21 follow-up).

A member's calibration, its ensemble's combiner, threshold and calibration, and a triage certificate (Learn-then-Test
on the calibration split) are fitted on the member's stored study scores. Training stores the torch path's
(``val_predictions.csv``, ``calibration_predictions.csv``); a graph's scores drift from those, so a certificate
fitted on them holds for the torch path only (:data:`zoo.backends.CERTIFIED_DRIFT` is the rule for the rest).
At export (:func:`store`, called after :func:`zoo.onnx.export_member` by training and ``bone-zoo export``), each
installed runtime's ``auto`` choice (:func:`zoo.backends.auto_backends`: the int8 graph if it passed its check on that
runtime, else the fp32 one; ONNX Runtime, and OpenVINO where installed) scores the same images the torch path scored,
through the runner ``predict.py`` uses, and writes ``val_predictions.<backend>.csv`` /
``calibration_predictions.<backend>.csv`` (the torch files' columns: ``id, part, label, prob`` per study).
``config.json``'s ``export.scores.<backend>`` records what they belong to:

- ``graph_sha256``: the graph file scored (a graph exported or quantised again makes them stale);
- ``probe``: the backend's probabilities of two fixed synthetic images (:func:`probe_images`); at predict time the
  runner scores them again, and a runtime that computes them otherwise (another ONNX Runtime or OpenVINO version,
  another CPU: OpenVINO's default bf16 on one, f32 on another) by more than :data:`PROBE_ATOL` makes them stale;
- ``files``: per split, the file and a digest of its (label, prob) rows, independent of the study ids (a push
  pseudonymises those); a missing or changed file is stale.

:func:`stored` returns the frames that pass those checks; :class:`zoo.ensemble.Ensemble` fits on them in place of
the torch files, and a triage fitted on a member's own calibration scores is certified on its backend. A member
without them (an older export, a forced backend other than its ``auto`` choice, another runtime) keeps the torch
files and the drift rule, and the warning says why its own scores were not used.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.backends import GRAPH_BATCH, PROBE_ATOL, installed_runtimes, open_backend, probe_images
from zoo.members import GRAPH_BACKENDS, MemberError, file_sha256, read_member_config, score_file

SPLITS = ("val", "calibration")  # the member's validation studies, its held-out calibration split
def score_studies(runner, images: np.ndarray, frame: pd.DataFrame) -> pd.DataFrame:
    """Study scores (``id, part, label, prob``, sorted by id, as training's validation tables) of ``runner`` (a
    graph backend's ``.predict``) on uint8 ``images`` ``(n, S, S)`` whose rows (``id, part, label``) are ``frame``,
    batched as ``predict.py`` batches them (:data:`zoo.backends.GRAPH_BATCH`)."""
    from zoo.metrics import aggregate_studies

    images = np.asarray(images, dtype=np.uint8)
    batches = (images[i:i + GRAPH_BATCH, None] for i in range(0, len(images), GRAPH_BATCH))
    df = frame[[c for c in ("id", "part", "label") if c in frame.columns]].reset_index(drop=True).copy()
    df["prob"] = runner.predict(batches)
    return aggregate_studies(df, "prob")


def digest(frame: pd.DataFrame) -> str:
    """SHA-256 of a study table's (label, prob) rows in content order: the same before and after a push replaces the
    study ids by pseudonyms, different when any score or label changes."""
    v = frame[["label", "prob"]].to_numpy(dtype=np.float64)
    v = v[np.lexsort((v[:, 1], v[:, 0]))]
    return hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()


def runtime_version(backend: str) -> str:
    """The runtime that computes ``backend``'s scores, with its version (for the record and the messages)."""
    if backend.startswith("openvino"):
        import openvino

        return f"openvino {openvino.__version__}"
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def runtime_check(folder: Path, backend: str, images: np.ndarray, frame, reference) -> dict:
    """:func:`zoo.onnx.graph_check` of ``backend`` (``openvino-int8``) through its runner, with what makes the
    verdict hold elsewhere: the runtime's version and its probabilities of the probe images (:func:`zoo.backends.
    probe_images`), which :func:`zoo.backends.int8_check` compares where the graph is run (another CPU computes
    OpenVINO's graph in another precision). A runtime that cannot open the graph gets ``passed: False`` and the
    error."""
    from zoo.onnx import graph_check

    try:
        runner = open_backend(folder, backend)
        check = graph_check(runner, images, frame, reference)
        probe = [float(p) for p in runner.predict([probe_images(images.shape[-1])])]
    except (ImportError, RuntimeError, OSError, MemberError) as exc:
        return {"passed": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    return {**check, "runtime": runtime_version(backend), "probe": probe}


def store(folder: str | Path, splits: dict[str, tuple[np.ndarray, pd.DataFrame]]) -> dict:
    """Score ``splits`` (``val`` / ``calibration`` -> uint8 images ``(n, S, S)`` and their rows ``id, part, label``:
    the images training's torch path scored for that split's predictions file) with each installed runtime's
    ``auto`` backend of the member in ``folder``, write the files and record them in config.json's export record
    (which :func:`zoo.onnx.export_member` wrote just before for these weights). Returns ``{backend: record}``; {}
    when the member has no fresh export or no split has images. Score files not recorded now are removed."""
    from zoo.atomic import write_csv
    from zoo.backends import auto_backends
    from zoo.onnx import export_record, write_export_record

    folder = Path(folder)
    record = export_record(folder)
    if not record:
        return {}
    splits = {k: v for k, v in splits.items() if v is not None and v[0] is not None and len(v[0])}
    if "val" in splits and isinstance(record.get("int8"), dict) and (folder / "val_predictions.csv").is_file():
        # ONNX Runtime's int8 check is the export's; each other runtime runs the same graph its own way (OpenVINO:
        # its kernels, its default bf16 between them), so it is checked there: auto runs it only where it passed
        reference = pd.read_csv(folder / "val_predictions.csv", dtype={"id": str})
        record["int8"]["runtimes"] = {rt: runtime_check(folder, f"{rt}-int8", *splits["val"], reference)
                                      for rt in installed_runtimes() if rt != "onnx"}
    scores: dict[str, dict] = {}
    size = None
    for runtime in installed_runtimes() if splits else []:
        for backend in auto_backends(record, runtime):
            try:
                runner = open_backend(folder, backend)
            except (FileNotFoundError, MemberError, ImportError):
                continue  # not exported, stale, runtime missing: auto would not run it either
            size = size or _img_size(folder)
            entry = {"graph": graph_file(backend), "graph_sha256": file_sha256(folder / graph_file(backend)),
                     "runtime": runtime_version(backend),
                     "probe": [float(p) for p in runner.predict([probe_images(size)])], "files": {}}
            for split, (images, frame) in splits.items():
                name = score_file(split, backend)
                write_csv(score_studies(runner, images, frame), folder / name)
                written = pd.read_csv(folder / name, dtype={"id": str})  # the digest of what a reader will see
                entry["files"][split] = {"file": name, "digest": digest(written), "n_studies": len(written)}
            scores[backend] = entry
            break  # auto's first openable graph on this runtime is the one it runs
    for split in SPLITS:  # an earlier export's files that no record names any more
        for backend in GRAPH_BACKENDS:
            if split not in scores.get(backend, {}).get("files", {}):
                (folder / score_file(split, backend)).unlink(missing_ok=True)
    record["scores"] = scores
    write_export_record(folder, record)
    return scores


def describe_scores(scores: dict) -> str:
    """One line on what :func:`store` wrote."""
    if not scores:
        return "no graph scores stored (no fresh graph, or no validation images to score)"
    parts = []
    for backend, entry in scores.items():
        counts = ", ".join(f"{split} {f['n_studies']}" for split, f in entry["files"].items())
        parts.append(f"{backend} ({counts or 'no studies'})")
    return "stored the validation/calibration study scores of " + ", ".join(parts)


def graph_file(backend: str) -> str:
    """The graph file a graph backend runs (``model.onnx`` or ``model.int8.onnx``)."""
    from zoo.backends import GRAPHS
    from zoo.onnx import ONNX_FILES

    return ONNX_FILES[GRAPHS[backend]]


def _img_size(folder: Path) -> int:
    return int(read_member_config(folder)["img_size"])


@dataclass
class Stored:
    """A member's stored scores of the backend it runs on that are fresh: split -> study table (``id, part, label,
    prob``); ``why``: why a split's scores are not used (empty when every recorded split is)."""

    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    why: str = ""


def stored(folder: str | Path, backend: str, runner) -> Stored:
    """The stored scores of ``backend`` (its runner ``runner``, which scores the probe images once here) for the
    member in ``folder`` that are what the backend gives now (module docstring); torch: none (its predictions are
    training's files)."""
    if backend == "torch" or runner is None:
        return Stored()
    from zoo.onnx import export_record

    folder = Path(folder)
    rec = (export_record(folder).get("scores") or {}).get(backend)
    if not rec:
        return Stored(why=f"no {backend} scores stored at export (export again: `bone-zoo export {folder} --onnx "
                      "--int8 --calibration-data DIR`)")
    graph = folder / rec["graph"]
    if not graph.is_file() or file_sha256(graph) != rec.get("graph_sha256"):
        return Stored(why=f"{rec['graph']} is not the graph its stored {backend} scores came from (exported again?)")
    probe = np.asarray(rec.get("probe", []), dtype=float)
    got = np.asarray(runner.predict([probe_images(_img_size(folder))]), dtype=float)
    if probe.shape != got.shape or not np.all(np.abs(got - probe) <= PROBE_ATOL):
        moved = float(np.abs(got - probe).max()) if probe.shape == got.shape else float("nan")
        return Stored(why=f"{runtime_version(backend)} here computes {backend} differently from the runtime that "
                      f"stored its scores ({rec.get('runtime')}; probe images moved by {moved:.2e})")
    out, why = Stored(), []
    for split, f in (rec.get("files") or {}).items():
        path = folder / f["file"]
        df = pd.read_csv(path, dtype={"id": str}) if path.is_file() else None
        if df is None or digest(df) != f.get("digest"):
            why.append(f"{f['file']} {'missing' if df is None else 'changed since export'}")
            continue
        out.frames[split] = df
    out.why = "; ".join(why)
    return out
