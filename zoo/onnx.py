"""ONNX export and an ONNX Runtime backend for members.

``python -m zoo export weights/ --onnx`` writes ``model.onnx`` beside each member's ``model.safetensors``: a graph
from uint8 images ``(batch, 1, S, S)`` to probabilities ``(batch,)`` (normalisation and sigmoid inside), with a
dynamic batch axis checked at export with two batch sizes. ``--int8`` adds ``model.int8.onnx``: static int8
quantisation (QDQ, per-channel weights) calibrated on images the caller gives (validation images, never test).

Each graph records, in its ONNX metadata (``bone_zoo.weights_sha256``), the SHA-256 of the model.safetensors it was
exported from; :class:`OnnxMember` refuses a graph whose record is not the member's current weights (a member
retrained into the same folder keeps its old graph until it is exported again) or that has none.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from zoo.atomic import atomic_path
from zoo.members import WEIGHTS, WEIGHTS_HASH, MemberError, file_sha256, read_member_config

ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
SOURCE_KEY = "bone_zoo.weights_sha256"  # ONNX metadata_props: the SHA-256 of the weights a graph was exported from


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
    example = torch.randint(0, 256, (2, 1, s, s), dtype=torch.uint8)
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.onnx.export(wrapper, (example,), str(tmp), input_names=["image"], output_names=["probability"],
                          dynamic_axes={"image": {0: "batch"}, "probability": {0: "batch"}}, opset_version=17,
                          dynamo=False)
        _record_source(tmp, source)
        sess = session(tmp)
        for n in (1, 3):  # the batch axis really is dynamic, and the graph computes what PyTorch does
            x = torch.randint(0, 256, (n, 1, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
            with torch.inference_mode():
                ref = wrapper(x).numpy()
            got = run(sess, x.numpy())
            if got.shape != (n,) or not np.allclose(got, ref, atol=check_atol):
                raise RuntimeError(f"{path}: ONNX output differs from PyTorch at batch {n} "
                                   f"(max |diff| {np.abs(got - ref).max():.2e})")
    return path


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: Iterable[np.ndarray]) -> Path:
    """Static int8 quantisation of an exported member, calibrated on uint8 batches ``(B, 1, S, S)``; the int8 graph
    records the weights the fp32 one came from."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {"image": np.ascontiguousarray(batch, dtype=np.uint8)}

    import onnx

    props = onnx.load(str(fp32_path), load_external_data=False).metadata_props
    source = next((p.value for p in props if p.key == SOURCE_KEY), None)
    if not source:
        raise MemberError(f"{fp32_path}: records no source weights; export it again with `bone-zoo export "
                          f"{Path(fp32_path).parent} --onnx` before quantising it")
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as work, atomic_path(out_path) as tmp:
        pre = Path(work) / "pre.onnx"  # shape-inferred, optimised graph: what quantize_static wants as input
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        _record_source(tmp, source)
    return out_path


class OnnxMember:
    """A member's exported graph, used in place of its PyTorch model by the ensemble (``--backend onnx``); a graph
    exported from other weights than the member's current ones (or recording none) is a :class:`MemberError`."""

    def __init__(self, folder: str | Path, backend: str = "onnx"):
        path = Path(folder) / ONNX_FILES[backend]
        flag = " --int8 --calibration-data DIR" if backend == "onnx-int8" else ""
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: export it with `python -m zoo export {folder} --onnx{flag}`")
        self.session = session(path)
        source, current = recorded_source(self.session), current_weights_sha256(folder)
        if source != current:
            why = ("records no source weights (exported before graphs recorded them)" if not source else
                   f"was exported from other weights (sha256 {source[:12]}...) than the member's model.safetensors "
                   f"now ({current[:12]}...; retrained into the same folder?)")
            raise MemberError(f"{path} {why}: it would run an old network with the new calibration and threshold. "
                              f"Export it again: `bone-zoo export {folder} --onnx{flag}`")

    def predict(self, batches: Iterable[np.ndarray], tta: bool = False) -> np.ndarray:
        out = []
        for b in batches:
            p = run(self.session, b)
            if tta:
                p = (p + run(self.session, b[..., ::-1])) / 2
            out.append(p)
        return np.concatenate(out) if out else np.zeros(0, np.float32)
