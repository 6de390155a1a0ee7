"""Fast inference paths give the plain fp32 path's answers: fp32 paths within 1e-4 per image, bf16 / int8 within
0.005 study AUC on the FracAtlas dev test split (skipped when ../shared/data is absent)."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, SHARED_DATA, run_script

from zoo.data import load_dataset, load_images, studies
from zoo.ensemble import Ensemble
from zoo.metrics import binary_metrics
from zoo.model import BoneClassifier


@pytest.fixture(scope="module")
def run(trained_run):
    assert trained_run["proc"].returncode == 0, trained_run["proc"].stderr[-2000:]
    return trained_run


def _plain_fp32(member, paths):
    """The reference: contiguous fp32, batch 1, no autocast, normalised by hand."""
    model = BoneClassifier.load(member).eval()
    arr = load_images(paths, model.img_size, "", quiet=True)
    with torch.no_grad():
        x = [(torch.from_numpy(np.array(arr.array[i]))[None, None].float() / 255 - model.mean) / model.std
             for i in range(len(paths))]
        return np.array([torch.sigmoid(model(xi)).item() for xi in x])


def test_fp32_fast_paths_match_the_plain_loop(run, tmp_path):
    member = run["out"] / "resnet10t"
    test = load_dataset(run["data"]).test.head(24)
    ref = _plain_fp32(member, test["path"].tolist())
    for batch in (1, 4, 32):  # channels_last, any batch size
        ens = Ensemble.from_paths([str(member)], precision="fp32")
        img, _ = ens.predict_images(test, batch_size=batch, cache_dir="", quiet=True)
        assert np.abs(img["resnet10t"].to_numpy() - ref).max() < 1e-4, batch
    proc = subprocess.run([sys.executable, "-m", "zoo", "export", str(member), "--onnx"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (member / "model.onnx").is_file() and "dynamic batch checked" in proc.stdout
    ens = Ensemble.from_paths([str(member)], backend="onnx")
    img, _ = ens.predict_images(test, batch_size=5, cache_dir="", quiet=True)
    assert np.abs(img["resnet10t"].to_numpy() - ref).max() < 1e-4
    code = ("import sys, predict; a = predict.get_args_parser().parse_args(sys.argv[1:]); "
            "assert predict.main(a) == 0; bad = [m for m in ('torch', 'torchvision', 'timm') if m in sys.modules]; "
            "assert not bad, f'the ONNX path imported {bad}'")
    proc = subprocess.run([sys.executable, "-c", code, "--data", str(run["data"]), "--models", str(member),
                           "--backend", "onnx", "--quiet", "-output", str(tmp_path / "p.csv")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(pd.read_csv(tmp_path / "p.csv")) == load_dataset(run["data"]).test["id"].nunique()


def test_onnx_backend_without_export_says_how(run, tmp_path):
    import shutil

    member = shutil.copytree(run["out"] / "regnetx_002", tmp_path / "regnetx_002")  # training exported it: a member
    for graph in member.glob("*.onnx"):  # trained with --no-export (or before exports) has no graph
        graph.unlink()
    p = run_script("predict.py", "--data", run["data"], "--models", member, "--backend", "onnx",
                   "-output", tmp_path / "p.csv", cwd=tmp_path)
    assert p.returncode == 2 and "python -m zoo export" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data/fracatlas-hand absent")
def test_bf16_and_int8_keep_the_study_auc_on_fracatlas(tmp_path):
    out = tmp_path / "w"
    proc = run_script("train_all.py", "--data", SHARED_DATA, "--models", "resnet10t", "--epochs", "2",
                      "--img-size", "128", "--lr", "1e-3", "--out", out, "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    member = out / "resnet10t"
    proc = subprocess.run([sys.executable, "-m", "zoo", "export", str(member), "--onnx", "--int8",
                           "--calibration-data", str(SHARED_DATA)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    test = load_dataset(SHARED_DATA).test
    truth = studies(test).set_index("id")["label"]

    def auc(**kw):
        st = Ensemble.from_paths([str(member)], **kw).predict_studies(test, cache_dir="", quiet=True)
        return binary_metrics(truth[st["id"]].to_numpy(), st["ensemble"].to_numpy())["auc"]

    fp32 = auc(precision="fp32")
    assert abs(auc(precision="bf16") - fp32) <= 0.005
    assert abs(auc(backend="onnx-int8") - fp32) <= 0.005


# -- a stale graph is refused (issue 18.8) --------------------------------------------------------------------------
def _tiny_member(folder, seed: int):
    torch.manual_seed(seed)
    return BoneClassifier("resnet10t", img_size=32, head_hidden=[8]).save_member(folder)


def _export(folder):
    from zoo.cli import main

    return main(["export", str(folder), "--onnx"])


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_graph_of_other_weights_is_refused_with_the_export_command(tmp_path, runtime):
    """A member retrained into the same folder keeps its old model.onnx until exported again: the graph records
    the SHA-256 of the weights it came from, and one that is not the member's current weights is refused, on
    each runtime (OpenVINO reads the record from its own parse of the graph)."""
    import onnx

    from zoo.members import MemberError
    from zoo.onnx import SOURCE_KEY, quantize_int8

    if runtime == "openvino":
        pytest.importorskip("openvino")
        from zoo.backends import OpenVinoMember as OnnxMember
    else:
        from zoo.onnx import OnnxMember

    member = _tiny_member(tmp_path / "m", seed=0)
    assert _export(member) == 0
    weights = json.loads((member / "config.json").read_text())["weights_sha256"]
    props = {p.key: p.value for p in onnx.load(str(member / "model.onnx")).metadata_props}
    assert props[SOURCE_KEY] == weights
    OnnxMember(member)  # fresh: used
    rng = np.random.default_rng(0)
    quantize_int8(member / "model.onnx", member / "model.int8.onnx",
                  (rng.integers(0, 256, (2, 1, 32, 32), dtype=np.uint8) for _ in range(2)))
    OnnxMember(member, "onnx-int8")

    _tiny_member(member, seed=1)  # retrained into the same --out: new weights, config and calibration
    for backend, flag in (("onnx", "--onnx`"), ("onnx-int8", "--onnx --int8")):
        with pytest.raises(MemberError, match="exported from other weights") as info:
            OnnxMember(member, backend)
        assert f"bone-zoo export {member} {flag}" in str(info.value)
    with pytest.raises(MemberError, match="exported from other weights"):
        Ensemble.from_paths([str(member)], backend="onnx")

    assert _export(member) == 0  # exported again: used
    OnnxMember(member)
    graph = onnx.load(str(member / "model.onnx"))  # a graph exported before graphs recorded their weights
    del graph.metadata_props[:]
    onnx.save(graph, str(member / "model.onnx"))
    with pytest.raises(MemberError, match="records no source weights"):
        OnnxMember(member)
