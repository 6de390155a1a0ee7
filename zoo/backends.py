"""Which runtime predicts for each member: PyTorch, or a member's exported graphs on ONNX Runtime or OpenVINO.

``--backend auto`` (predict.py's default) picks, per member, the fastest graph it has that is fresh (exported from
its current weights) and passed its checks, else PyTorch, and says why (:class:`Choice`):

1. the int8 graph, if its accuracy check at export passed on the runtime that will run it (:func:`int8_check`:
   ``config.json`` ``export.int8.passed`` for ONNX Runtime, ``export.int8.runtimes.openvino.passed`` for OpenVINO;
   validation AUC within 0.005 of the torch path's, :mod:`zoo.onnx`);
2. the fp32 graph;
3. PyTorch: no graph, a stale one (other weights than the member's now), or CAMs asked for (they need the network).

The runtime for a graph (:func:`graph_runtime`, the one place the rule lives) is OpenVINO where it is installed and
ONNX Runtime otherwise: ``bench/speed.py`` measured OpenVINO faster on both graphs at the same study AUC on this
project's CPU (bench/README.md, "OpenVINO against ONNX Runtime"). ``BONE_ZOO_GRAPH_RUNTIME=onnxruntime`` overrides
it. Test-time augmentation runs on every backend (the graphs are run on the flipped batch too). Forced backends
(``torch``, ``onnx``, ``onnx-int8``, ``openvino``, ``openvino-int8``) use that one or fail with what to do.

The choice never depends on ``--triage``: ``predict.py``, ``predict.py --triage`` and the demo give a member the same
scores. A triage certificate holds for the scores of the calibration split it was fitted on: the export stores each
installed runtime's ``auto`` backend's own scores of those studies (:mod:`zoo.graph_scores`), and the ensemble fits
on them where they are fresh, so the certificate holds on that backend. Where they are not (an older export, a forced
backend, another runtime), it fits on the torch path's (training's ``calibration_predictions.csv``); :func:`drift`
says how far a backend's scores were measured from that path at export, and
:meth:`zoo.ensemble.Ensemble.fit_calibration` then claims the certificate only when every such member's drift is at
most :data:`CERTIFIED_DRIFT` (else the triage says which member and what to run instead).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.members import GRAPH_BACKENDS, RUNTIME_NAMES, MemberError, read_member_config, read_verified
from zoo.members import GRAPH_BATCH as GRAPH_BATCH  # re-exported: predict.py's graph batch size

GRAPHS = dict(zip(GRAPH_BACKENDS, ("onnx", "onnx-int8", "onnx", "onnx-int8")))  # backend -> the graph it runs
BACKENDS = ("auto", "torch", *GRAPHS)
# the largest change of a validation study's probability against the torch path (zoo.onnx.graph_check) that keeps a
# triage certified on the torch scores: a rule, not a theorem (the guarantee holds exactly for the scores it was
# fitted on); half a percentage point, a quarter of the triage grid's step (zoo.calibration.GRID)
CERTIFIED_DRIFT = 0.005


PROBE_ATOL = 1e-5  # a runtime that scores the probe images further from a stored probe computes otherwise
PROBE_SEED = 21


def probe_images(size: int) -> np.ndarray:
    """Two fixed uint8 images ``(2, 1, size, size)``: seeded noise and a smooth ramp with a disc (the same bytes on
    every machine: :class:`numpy.random.Generator` PCG64 is stable across platforms and versions). A runtime scores
    them at export and again where it runs: a difference says it computes otherwise there (zoo.graph_scores)."""
    noise = np.random.default_rng(PROBE_SEED).integers(0, 256, (size, size), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    ramp = 40 + 150 * xx + 60 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.1)
    return np.stack([noise, np.clip(ramp, 0, 255).astype(np.uint8)])[:, None]


def graph_runtime() -> str:
    """``openvino`` or ``onnx``: the runtime ``auto`` runs graphs on (see the module docstring for why)."""
    forced = os.environ.get("BONE_ZOO_GRAPH_RUNTIME", "")
    if forced in ("onnxruntime", "onnx"):
        return "onnx"
    return installed_runtimes()[-1]


def installed_runtimes() -> list[str]:
    """The graph runtimes here: ``onnx`` (ONNX Runtime, a core dependency) and ``openvino`` where installed."""
    return ["onnx"] + (["openvino"] if importlib.util.find_spec("openvino") is not None else [])


def int8_check(record: dict, runtime: str) -> dict:
    """The accuracy check of the int8 graph on ``runtime`` from an export record (:func:`zoo.onnx.export_record`):
    ONNX Runtime's is the record's ``int8`` entry itself, another runtime's its ``runtimes`` entry (each runtime runs
    the graph with its own kernels, so one's pass says nothing of another's); {} where none was made (no int8 graph,
    or an export from before the checks were made per runtime)."""
    check = record.get("int8") if isinstance(record.get("int8"), dict) else {}
    if runtime == "onnx":
        return check
    runtimes = check.get("runtimes") if isinstance(check.get("runtimes"), dict) else {}
    return runtimes.get(runtime) if isinstance(runtimes.get(runtime), dict) else {}


def holds_here(check: dict, runner, folder: Path) -> str:
    """"" if a runtime's int8 check (:func:`int8_check`) was made with what computes here, else why not: the runner
    scores the probe images (:func:`zoo.graph_scores.probe_images`) as the export recorded them (another CPU runs
    OpenVINO's graph in another precision, another version with other kernels)."""
    probe = np.asarray(check.get("probe", []), dtype=float)
    got = np.asarray(runner.predict([probe_images(int(read_member_config(folder)["img_size"]))]), dtype=float)
    if probe.shape == got.shape and np.all(np.abs(got - probe) <= PROBE_ATOL):
        return ""
    return (f"its check was made where the runtime computes otherwise ({check.get('runtime', 'unknown version')}; "
            "the probe images score differently here)")


def auto_backends(record: dict, runtime: str) -> list[str]:
    """The graph backends ``auto`` tries, in order, for a member whose export record (:func:`zoo.onnx.export_record`)
    is ``record``, on ``runtime``: the int8 graph if its accuracy check on that runtime passed, then the fp32
    graph."""
    graphs = (["onnx-int8"] if int8_check(record, runtime).get("passed") else []) + ["onnx"]
    return [g if runtime == "onnx" else f"openvino{g[4:]}" for g in graphs]


@dataclass
class Choice:
    """The backend one member runs on, its runner (None for PyTorch) and why it was chosen."""

    backend: str
    runner: object | None = None  # .predict(batches, tta) -> probabilities
    why: str = "asked for"
    drift: float = 0.0  # :func:`drift` of this backend for this member (NaN: not measured)

    def line(self, name: str) -> str:
        return f"{name}: backend {self.backend} ({self.why})"

    @property
    def keeps_certificate(self) -> bool:
        """Its scores are within :data:`CERTIFIED_DRIFT` of the torch ones a triage certificate was fitted on."""
        return bool(self.drift <= CERTIFIED_DRIFT)  # NaN (not measured): no

    def uncertified(self, name: str) -> str:
        """Why a triage certified on member ``name``'s torch scores is not certified on this backend's; "" if it is."""
        if self.keeps_certificate:
            return ""
        moved = ("were not measured against them at export" if self.drift != self.drift else
                 f"moved validation probabilities by up to {self.drift:.4f} from them (more than {CERTIFIED_DRIFT})")
        return (f"member {name} runs on {self.backend}, whose scores {moved}, and the triage was certified on the "
                "PyTorch scores of training; predict with --backend torch (or the backend whose own scores the export "
                "stored) for a certified triage")


def drift(folder: Path, backend: str) -> float:
    """How far ``backend``'s study probabilities were from the torch path's on the member's validation studies when
    its graphs were exported (``config.json`` ``export``: ``fp32`` / ``int8`` ``max_prob_change``, ONNX Runtime):
    0 for torch (the path itself), NaN where not measured (an export without validation images; OpenVINO, whose
    default bf16 inference is not what the export ran)."""
    if backend == "torch":
        return 0.0
    if backend.startswith("openvino"):
        return float("nan")
    from zoo.onnx import export_record

    check = export_record(folder).get("fp32" if backend == "onnx" else "int8") or {}
    return float(check.get("max_prob_change", float("nan")))


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
        verify_for_graphs(folder)
        try:
            return Choice(requested, open_backend(folder, requested), drift=drift(folder, requested))
        except FileNotFoundError as exc:
            raise MemberError(str(exc)) from exc
    if cams:
        return Choice("torch", why="auto: CAMs need the PyTorch network")
    try:
        verify_for_graphs(folder)
    except StaleGraphs as exc:
        return Choice("torch", why=f"auto: {exc}")
    from zoo.onnx import export_record

    record = export_record(folder)
    runtime = graph_runtime()
    check = int8_check(record, runtime)
    skipped = []
    if not record.get("int8"):
        skipped.append("no int8 graph checked for these weights")
    elif not check:
        skipped.append(f"int8 not checked on {RUNTIME_NAMES[runtime]} (exported before the check ran on each runtime, "
                       f"or where {RUNTIME_NAMES[runtime]} was not installed: `bone-zoo export {folder} --onnx --int8 "
                       "--calibration-data DIR` checks it; or run it on ONNX Runtime: --backend onnx-int8)")
    elif check.get("error"):
        skipped.append(f"int8 could not be checked on {RUNTIME_NAMES[runtime]} at export ({check['error']})")
    elif not check.get("passed"):
        skipped.append(f"int8 failed its accuracy check on {RUNTIME_NAMES[runtime]} (validation AUC change "
                       f"{check.get('auc_change')})")
    for backend in auto_backends(record, runtime):
        try:
            runner = open_backend(folder, backend)
        except (FileNotFoundError, MemberError, ImportError) as exc:
            skipped.append(f"{GRAPHS[backend]}: {_short(exc)}")
            continue
        if backend == "openvino-int8" and (why := holds_here(check, runner, folder)):
            skipped.append(f"int8 on {RUNTIME_NAMES[runtime]}: {why}")
            continue
        return Choice(backend, runner, "auto: " + "; ".join(skipped + ["fastest fresh graph"]),
                      drift(folder, backend))
    return Choice("torch", why="auto: " + "; ".join(skipped))


def verify_for_graphs(folder: Path) -> None:
    """The checks the torch path makes, before any graph of ``folder`` runs: its weights are the ones config.json
    names and fit its sizes (:func:`zoo.members.read_verified`, which refuses a damaged member here as there), and its
    network config is the one the graphs were exported from (else they are stale: :class:`MemberError`, and ``auto``
    falls back to the torch path, which refuses a config it cannot build)."""
    read_verified(folder)
    from zoo.onnx import EXPORT_KEY

    exported = (read_member_config(folder).get(EXPORT_KEY) or {}).get("model_config")
    now = read_member_config(folder)
    if exported is not None and any(now.get(k) != v for k, v in exported.items()):
        changed = sorted(k for k, v in exported.items() if now.get(k) != v)
        raise StaleGraphs(f"{folder}: config.json changed since its graphs were exported ({', '.join(changed)}): "
                          f"export again (`bone-zoo export {folder} --onnx`)")


class StaleGraphs(MemberError):
    """config.json no longer describes the network the member's graphs compute."""


def _short(exc: BaseException) -> str:
    text = str(exc)
    if "missing" in text:
        return "not exported"
    if "other weights" in text or "records no source" in text:
        return "stale (exported from other weights)"
    return text.splitlines()[0][:120]


def _openvino():
    try:
        import openvino
    except ImportError as exc:
        raise ImportError("the openvino backends need OpenVINO: pip install 'bone-zoo[openvino]'") from exc
    return openvino


def openvino_compiled(path: str | Path, model=None):
    """An ONNX graph (or ``model``, the graph as read by OpenVINO) compiled by OpenVINO for this CPU as the openvino
    backends run it: its default inference precision (bf16 where the CPU computes it natively, else f32), a latency
    hint, one thread per core."""
    return _openvino().Core().compile_model(str(path) if model is None else model, "CPU",
                                   {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": os.cpu_count() or 1})


def openvino_source(model) -> str | None:
    """The recorded source weights of a graph as read by OpenVINO (its ONNX ``metadata_props`` are the model's
    ``framework`` runtime info), None if it records none: the freshness check without importing the onnx package
    (~1 s of a prediction's start-up) or parsing the file twice."""
    from zoo.onnx import SOURCE_KEY

    key = ["framework", SOURCE_KEY]
    return model.get_rt_info(key).astype(str) if model.has_rt_info(key) else None


class OpenVinoMember:
    """A member's exported graph (``onnx`` fp32 or ``onnx-int8``) compiled by OpenVINO for this CPU, with its default
    inference precision (bf16 where the CPU computes it natively, else f32) and a latency hint; the same freshness
    check as :class:`zoo.onnx.OnnxMember`."""

    def __init__(self, folder: str | Path, graph: str = "onnx"):
        from zoo.onnx import check_source, graph_path

        path = graph_path(folder, graph)
        model = _openvino().Core().read_model(str(path))
        check_source(path, openvino_source(model), folder, graph)
        self.compiled = openvino_compiled(path, model)
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
