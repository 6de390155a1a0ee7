"""Which runtime predicts for each member: PyTorch, or a member's exported graphs on ONNX Runtime or OpenVINO.

``--backend auto`` (predict.py's default) picks, per member, the fastest graph it has that is fresh (exported from
its current weights) and passed its checks, else PyTorch, and says why (:class:`Choice`):

1. the int8 graph, if its accuracy check at export passed (``config.json`` ``export.int8.passed``: validation AUC
   within 0.005 of the fp32 torch path, :mod:`zoo.onnx`);
2. the fp32 graph;
3. PyTorch: no graph, a stale one (other weights than the member's now), or CAMs asked for (they need the network).

The runtime for a graph (:func:`graph_runtime`, the one place the rule lives) is OpenVINO where it is installed and
ONNX Runtime otherwise: ``bench/speed.py`` measured OpenVINO faster on both graphs at the same study AUC on this
project's CPU (bench/README.md, "OpenVINO against ONNX Runtime"). ``BONE_ZOO_GRAPH_RUNTIME=onnxruntime`` overrides
it. Test-time augmentation runs on every backend (the graphs are run on the flipped batch too). Forced backends
(``torch``, ``onnx``, ``onnx-int8``, ``openvino``, ``openvino-int8``) use that one or fail with what to do.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.members import MemberError

GRAPHS = {"onnx": "onnx", "onnx-int8": "onnx-int8", "openvino": "onnx", "openvino-int8": "onnx-int8"}  # -> graph
BACKENDS = ("auto", "torch", *GRAPHS)


def graph_runtime() -> str:
    """``openvino`` or ``onnx``: the runtime ``auto`` runs graphs on (see the module docstring for why)."""
    forced = os.environ.get("BONE_ZOO_GRAPH_RUNTIME", "")
    if forced in ("onnxruntime", "onnx"):
        return "onnx"
    return "openvino" if importlib.util.find_spec("openvino") is not None else "onnx"


@dataclass
class Choice:
    """The backend one member runs on, its runner (None for PyTorch) and why it was chosen."""

    backend: str
    runner: object | None = None  # .predict(batches, tta) -> probabilities
    why: str = "asked for"

    def line(self, name: str) -> str:
        return f"{name}: backend {self.backend} ({self.why})"


def open_backend(folder: Path, backend: str) -> object:
    """The runner of a forced graph backend; FileNotFoundError / MemberError (with the export command) when the
    member's graph is missing or stale."""
    if backend.startswith("openvino"):
        return OpenVinoMember(folder, GRAPHS[backend])
    from zoo.onnx import OnnxMember

    return OnnxMember(folder, backend)


def choose(folder: Path, requested: str, cams: bool = False) -> Choice:
    """The :class:`Choice` for one member; ``requested`` is one of :data:`BACKENDS`."""
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {requested!r}")
    if requested == "torch":
        return Choice("torch")
    if requested != "auto":
        try:
            return Choice(requested, open_backend(folder, requested))
        except FileNotFoundError as exc:
            raise MemberError(str(exc)) from exc
    if cams:
        return Choice("torch", why="auto: CAMs need the PyTorch network")
    from zoo.onnx import export_record

    check = export_record(folder).get("int8") or {}
    runtime = graph_runtime()
    skipped = []
    if not check:
        skipped.append("no int8 graph checked for these weights")
    elif not check.get("passed"):
        skipped.append(f"int8 failed its accuracy check (validation AUC change {check.get('auc_change')})")
    for graph in (["onnx-int8"] if check.get("passed") else []) + ["onnx"]:
        backend = graph if runtime == "onnx" else f"openvino{graph[4:]}"
        try:
            runner = open_backend(folder, backend)
        except (FileNotFoundError, MemberError, ImportError) as exc:
            skipped.append(f"{graph}: {_short(exc)}")
            continue
        return Choice(backend, runner, "auto: " + "; ".join(skipped + ["fastest fresh graph"]))
    return Choice("torch", why="auto: " + "; ".join(skipped))


def _short(exc: BaseException) -> str:
    text = str(exc)
    if "missing" in text:
        return "not exported"
    if "other weights" in text or "records no source" in text:
        return "stale (exported from other weights)"
    return text.splitlines()[0][:120]


class OpenVinoMember:
    """A member's exported graph (``onnx`` fp32 or ``onnx-int8``) compiled by OpenVINO for this CPU, with its default
    inference precision (bf16 where the CPU computes it natively, else f32) and a latency hint; the same freshness
    check as :class:`zoo.onnx.OnnxMember`."""

    def __init__(self, folder: str | Path, graph: str = "onnx"):
        from zoo.onnx import check_source, file_source, graph_path

        path = graph_path(folder, graph)
        check_source(path, file_source(path), folder, graph)
        try:
            import openvino as ov
        except ImportError as exc:
            raise ImportError("the openvino backends need OpenVINO: pip install 'bone-zoo[openvino]'") from exc
        core = ov.Core()
        self.compiled = core.compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                              "INFERENCE_NUM_THREADS": os.cpu_count() or 1})
        self.request = self.compiled.create_infer_request()

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.uint8)})
        return np.asarray(out[self.compiled.output(0)], dtype=np.float32).reshape(-1)

    def predict(self, batches: Iterable[np.ndarray], tta: bool = False) -> np.ndarray:
        out = []
        for b in batches:
            p = self._run(b)
            if tta:
                p = (p + self._run(b[..., ::-1])) / 2
            out.append(p)
        return np.concatenate(out) if out else np.zeros(0, np.float32)
