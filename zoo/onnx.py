"""ONNX export and an ONNX Runtime backend for members.

``python -m zoo export weights/ --onnx`` writes ``model.onnx`` beside each member's ``model.safetensors``: a graph
from uint8 images ``(batch, 1, S, S)`` to probabilities ``(batch,)`` (normalisation and sigmoid inside), with a
dynamic batch axis checked at export with two batch sizes. ``--int8`` adds ``model.int8.onnx``: static int8
quantisation (QDQ, per-channel weights) calibrated on images the caller gives (validation images, never test).

Each graph records, in its ONNX metadata (``bone_zoo.weights_sha256``), the SHA-256 of the model.safetensors it was
exported from; :class:`OnnxMember` refuses a graph whose record is not the member's current weights (a member
retrained into the same folder keeps its old graph until it is exported again) or that has none.

Training exports every finished member by default (:func:`export_member`; ``--no-export`` skips it): both graphs, the
int8 one calibrated on the member's own validation images, and an accuracy check of the int8 graph against the
torch path on those images on each installed runtime (ONNX Runtime; OpenVINO, which runs the graph with its own
kernels), stored in config.json (``export``) and the card. An int8 graph that moves the validation AUC by more than
:data:`INT8_AUC_TOLERANCE` on a runtime stays on disk but is not used there by ``--backend auto``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.atomic import atomic_path, write_text
from zoo.members import (
    GRAPH_BATCH,
    GRAPH_FILES,
    RUNTIME_NAMES,
    WEIGHTS,
    WEIGHTS_HASH,
    MemberError,
    file_sha256,
    read_member_config,
)

ONNX_FILES = dict(zip(("onnx", "onnx-int8"), GRAPH_FILES))  # backend -> graph file
SOURCE_KEY = "bone_zoo.weights_sha256"  # ONNX metadata_props: the SHA-256 of the weights a graph was exported from
EXPORT_KEY = "export"  # config.json: the graphs' source weights and the int8 accuracy check (export_member)
INT8_AUC_TOLERANCE = 0.005  # an int8 graph that moves the validation study AUC by more is not used by default
CALIBRATION_IMAGES = 64  # validation images that calibrate the int8 ranges (all of them are used for the check)
# images per calibration run: ONNX Runtime's calibration session (every tensor an output, no graph optimisation) holds
# ~0.43 GB per image at 512 px (regnet_x_800mf), so batches of 8 made it the peak of a whole training run (+3.4 GB;
# bench/speed.py's breakdown); min/max ranges do not depend on how the images are batched, nor does the CPU time
CALIBRATION_BATCH = 1


def _record_source(path: Path, weights_sha256: str) -> None:
    """Write ``weights_sha256`` into the graph's metadata (``path`` is the temporary file, before its rename)."""
    import onnx

    graph = onnx.load(str(path))
    kept = [p for p in graph.metadata_props if p.key != SOURCE_KEY]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    graph.metadata_props.add(key=SOURCE_KEY, value=weights_sha256)
    onnx.save(graph, str(path))


def recorded_source(sess) -> str | None:
    """The SHA-256 of the weights a graph (an ONNX Runtime session) was exported from, None if it records none."""
    return sess.get_modelmeta().custom_metadata_map.get(SOURCE_KEY)


def current_weights_sha256(folder: str | Path) -> str:
    """The SHA-256 of a member's weights now: config.json's ``weights_sha256`` (what its calibration and threshold
    belong to), else the hash of model.safetensors."""
    return read_member_config(folder).get(WEIGHTS_HASH) or file_sha256(Path(folder) / WEIGHTS)


def _probability(model):
    """uint8 images -> P(abnormal): the module whose graph is exported."""
    import torch

    class Probability(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.model((x.float() / 255.0 - model.mean) / model.std).float())

    return Probability().eval()


def session(path: str | Path):
    """An ONNX Runtime CPU session with every graph optimisation and one intra-op thread per core."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = os.cpu_count() or 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run(sess, batch_u8: np.ndarray) -> np.ndarray:
    """Probabilities for a uint8 batch ``(B, 1, S, S)``."""
    return sess.run(None, {"image": np.ascontiguousarray(batch_u8, dtype=np.uint8)})[0].reshape(-1)


def export_onnx(model, path: str | Path, check_atol: float = 1e-4, weights_sha256: str | None = None) -> Path:
    """Export ``model`` (a BoneClassifier) to ``path``; verify batch sizes 1 and 3 against PyTorch within
    ``check_atol`` before the file replaces any previous one. The graph records ``weights_sha256`` (default: the
    hash of the weights the model was loaded from, ``model.weights_sha256``)."""
    import torch  # exporting needs PyTorch; running the graph (OnnxMember) does not

    source = weights_sha256 or getattr(model, "weights_sha256", None)
    if not source:
        raise ValueError("export_onnx: the model's weights are unknown (not loaded from or saved to a member "
                         "folder); pass weights_sha256, or load the member with zoo.loader.load_model")
    model = model.eval().float().to("cpu", memory_format=torch.contiguous_format)
    wrapper = _probability(model)
    s = model.img_size
    # one input shape for tracing and the reference: each new shape costs PyTorch (oneDNN) its kernels again
    example = torch.randint(0, 256, (3, 1, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.onnx.export(wrapper, (example,), str(tmp), input_names=["image"], output_names=["probability"],
                          dynamic_axes={"image": {0: "batch"}, "probability": {0: "batch"}}, opset_version=17,
                          dynamo=False)
        _record_source(tmp, source)
        sess = session(tmp)
        with torch.inference_mode():
            reference = wrapper(example).numpy()
        for n in (1, 3):  # the batch axis really is dynamic, and the graph computes what PyTorch does
            ref = reference[:n]
            got = run(sess, example[:n].numpy())
            if got.shape != (n,) or not np.allclose(got, ref, atol=check_atol):
                raise RuntimeError(f"{path}: ONNX output differs from PyTorch at batch {n} "
                                   f"(max |diff| {np.abs(got - ref).max():.2e})")
    return path


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: Iterable[np.ndarray]) -> Path:
    """Static int8 quantisation of an exported member, calibrated on uint8 batches ``(B, 1, S, S)``; the int8 graph
    records the weights the fp32 one came from."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # one image per calibration run (CALIBRATION_BATCH)
        def __init__(self):
            self.it = (b[i:i + CALIBRATION_BATCH] for b in calibration for i in range(0, len(b), CALIBRATION_BATCH))

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {"image": np.ascontiguousarray(batch, dtype=np.uint8)}

    source = file_source(fp32_path)
    if not source:
        raise MemberError(f"{fp32_path}: records no source weights; export it again with `bone-zoo export "
                          f"{Path(fp32_path).parent} --onnx` before quantising it")
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as work, atomic_path(out_path) as tmp:
        pre = Path(work) / "pre.onnx"  # shape-inferred, optimised graph: what quantize_static wants as input
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        with _quiet_root_logger():  # per-channel axis notes on the head's 1-d BatchNorm weights (quantised per tensor)
            quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        _record_source(tmp, source)
    return out_path


def graph_path(folder: str | Path, backend: str) -> Path:
    """The graph file of ``backend`` (``onnx`` or ``onnx-int8``) in a member folder; FileNotFoundError with the export
    command when it is not there."""
    path = Path(folder) / ONNX_FILES[backend]
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: export it with "
                                f"`python -m zoo export {folder} --onnx{_flag(backend)}`")
    return path


def _flag(backend: str) -> str:
    return " --int8 --calibration-data DIR" if backend == "onnx-int8" else ""


def check_source(path: Path, source: str | None, folder: str | Path, backend: str) -> None:
    """Refuse (:class:`MemberError`, with the export command) a graph whose recorded source weights ``source`` are
    not the member's current ones."""
    current = current_weights_sha256(folder)
    if source != current:
        why = ("records no source weights (exported before graphs recorded them)" if not source else
               f"was exported from other weights (sha256 {source[:12]}...) than the member's model.safetensors "
               f"now ({current[:12]}...; retrained into the same folder?)")
        raise MemberError(f"{path} {why}: it would run an old network with the new calibration and threshold. "
                          f"Export it again: `bone-zoo export {folder} --onnx{_flag(backend)}`")


def file_source(path: str | Path) -> str | None:
    """The recorded source weights of a graph file, read from its metadata without building a session."""
    import onnx

    props = onnx.load(str(path), load_external_data=False).metadata_props
    return next((p.value for p in props if p.key == SOURCE_KEY), None)


@contextlib.contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantiser logs through the root logger; its warnings are kept out of a training run's output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class OnnxMember:
    """A member's exported graph, used in place of its PyTorch model by the ensemble (``--backend onnx``); a graph
    exported from other weights than the member's current ones (or recording none) is a :class:`MemberError`."""

    def __init__(self, folder: str | Path, backend: str = "onnx"):
        path = graph_path(folder, backend)
        self.session = session(path)
        check_source(path, recorded_source(self.session), folder, backend)

    def predict(self, batches: Iterable[np.ndarray], tta: bool = False) -> np.ndarray:
        out = []
        for b in batches:
            p = run(self.session, b)
            if tta:
                p = (p + run(self.session, b[..., ::-1])) / 2
            out.append(p)
        return np.concatenate(out) if out else np.zeros(0, np.float32)


# -- export of a finished member (training's default, and `bone-zoo export`) ----------------------------------------
def export_member(folder: str | Path, images: np.ndarray, frame, int8: bool = True,
                  calibration_images: int = CALIBRATION_IMAGES) -> dict:
    """Write ``model.onnx`` and (``int8``) ``model.int8.onnx`` for the member in ``folder``, through the one verified
    load, and record in its config.json and card what they came from and how the int8 graph did: returns that record.

    ``images`` are the member's validation images, uint8 ``(n, S, S)`` at its size, and ``frame`` their rows
    (``id``, ``label``; one per image, in the same order). The first ``calibration_images`` calibrate the int8
    ranges; all of them check each graph against the member's own validation predictions (:func:`graph_check`: the
    int8 one's AUC decides whether ``auto`` uses it, and each one's largest probability change whether a triage
    certified on the torch scores stays certified on it, :func:`zoo.backends.drift`).
    """
    from zoo.loader import load_model

    folder = Path(folder)
    model = load_model(folder)  # the weights config.json names, whatever the caller holds in memory
    export_onnx(model, folder / ONNX_FILES["onnx"])
    record: dict = {"weights_sha256": model.weights_sha256, "graphs": [ONNX_FILES["onnx"]],
                    "model_config": model.get_config()}  # what the graphs compute: a later edit makes them stale
    images = np.asarray(images, dtype=np.uint8)
    earlier = export_record(folder)
    if len(images):
        reference = pd.read_csv(folder / "val_predictions.csv", dtype={"id": str})
        record["fp32"] = graph_check(OnnxMember(folder, "onnx"), images, frame, reference)
    elif "fp32" in earlier:  # the same weights, checked before: the graph computes the same
        record["fp32"] = earlier["fp32"]
    if int8 and len(images):
        n_cal = min(len(images), calibration_images)
        batches = (images[i:min(i + 8, n_cal), None] for i in range(0, n_cal, 8))
        quantize_int8(folder / ONNX_FILES["onnx"], folder / ONNX_FILES["onnx-int8"], batches)
        record["graphs"].append(ONNX_FILES["onnx-int8"])
        precision = (read_member_config(folder).get("training") or {}).get("mixed_precision", "unknown")
        record["int8"] = {"calibration_images": n_cal, "reference": f"val_predictions.csv (the torch path as "
                          f"validated in training, mixed precision {precision})",
                          **graph_check(OnnxMember(folder, "onnx-int8"), images, frame, reference)}
        # ONNX Runtime's check; each other runtime's is made where its scores are stored (zoo.graph_scores.store)
    elif "int8" in earlier:  # an int8 graph of these same weights, checked before: kept
        record |= {"graphs": earlier["graphs"], "int8": earlier["int8"]}
    write_export_record(folder, record)
    return record


def graph_check(runner, images: np.ndarray, frame, reference) -> dict:
    """A graph on the validation images, through ``runner`` (the one ``predict.py`` uses: :class:`OnnxMember`,
    :class:`zoo.backends.OpenVinoMember`), against the member's own validation predictions (``reference``: ``id,
    label, prob`` per study, the torch path the member's AUC, threshold, calibration and a triage certificate come
    from): the study AUC of each on the studies both have (a study's score: the mean of its image probabilities),
    the change, the largest change of a study's probability, and whether the AUC moved by at most
    :data:`INT8_AUC_TOLERANCE` (``passed``; an AUC undefined on these studies, one class only, does not pass)."""
    from zoo.metrics import aggregate_studies, binary_metrics

    got = runner.predict(images[i:i + GRAPH_BATCH, None] for i in range(0, len(images), GRAPH_BATCH))  # as predict
    st = aggregate_studies(frame[["id", "label"]].reset_index(drop=True).assign(graph=got), "graph")
    st = st.merge(reference[["id", "prob"]], on="id")
    y = st["label"].to_numpy(dtype=float)
    auc_ref, auc = (binary_metrics(y, st[c].to_numpy(dtype=float))["auc"] for c in ("prob", "graph"))
    change = auc - auc_ref
    return {"val_auc": round(float(auc), 6), "val_auc_torch": round(float(auc_ref), 6),
            "auc_change": round(float(change), 6),
            "max_prob_change": round(float(np.abs(st["graph"] - st["prob"]).max()), 6) if len(st) else float("nan"),
            "n_images": len(images), "n_studies": len(st), "tolerance": INT8_AUC_TOLERANCE,
            "passed": bool(np.isfinite(change) and abs(change) <= INT8_AUC_TOLERANCE)}


def write_export_record(folder: Path, record: dict) -> None:
    """config.json's ``export`` entry and the card rendered from it (the weights and their hash are untouched)."""
    from zoo.card import member_card

    cfg = read_member_config(folder)
    cfg[EXPORT_KEY] = record
    write_text(folder / "config.json", json.dumps(cfg, indent=2, sort_keys=True))
    write_text(folder / "README.md", str(member_card(cfg)))


def export_record(folder: str | Path) -> dict:
    """The member's ``export`` record when it belongs to its current weights, else {} (never exported, or retrained
    since: its check says nothing about these weights)."""
    cfg = read_member_config(folder)
    rec = cfg.get(EXPORT_KEY) or {}
    return rec if rec.get("weights_sha256") == current_weights_sha256(folder) else {}


def describe_export(record: dict) -> str:
    """One line on what an export wrote and whether its int8 graph is used by default, on each runtime."""
    c = record.get("int8")
    if not c:
        return "model.onnx (no int8 graph)"
    verdict = ("used by --backend auto" if c["passed"] else
               f"NOT used by default: it moves the validation AUC by more than {c['tolerance']}"
               if np.isfinite(c["auc_change"]) else "NOT used by default: the validation AUC is undefined (one class)")
    runtimes = c.get("runtimes") if isinstance(c.get("runtimes"), dict) else {}
    others = "".join(
        f"; on {RUNTIME_NAMES.get(rt, rt)}: " + (f"AUC {o['val_auc']:.4f}, largest change {o['max_prob_change']:.4f}, "
                                                 f"{'used' if o.get('passed') else 'NOT used'} by default there"
                                                 if "val_auc" in o else f"not checked ({o.get('error', 'no result')})")
        for rt, o in runtimes.items() if isinstance(o, dict))
    return (f"model.onnx, model.int8.onnx (calibrated on {c['calibration_images']} validation images; int8 validation "
            f"AUC {c['val_auc']:.4f} vs torch {c['val_auc_torch']:.4f}, largest study probability change "
            f"{c['max_prob_change']:.4f} over {c['n_studies']} studies on ONNX Runtime: {verdict} there{others})")
