"""A triage certificate on the default backend (issue 21 follow-up).

Export scores each member's validation and calibration studies with the graph ``--backend auto`` runs it on (per
installed runtime) and stores them beside the torch predictions; the ensemble fits its calibration and the triage
on those, so ``predict.py --triage 0.05`` with default-trained members certifies on ``auto``. Scores that are not
what the backend gives now (missing, changed, another graph, another runtime) are not used: the drift rule of
``zoo.backends.CERTIFIED_DRIFT`` applies, as before. (a) the default path certifies where the drift rule would not,
and the stored scores are what predict.py computes on that backend; (b) each kind of stale file falls back.
"""

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, run_script

from zoo.backends import choose, installed_runtimes
from zoo.data import load_dataset
from zoo.ensemble import Ensemble
from zoo.members import score_file

RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino"}  # zoo.backends runtime -> BONE_ZOO_GRAPH_RUNTIME


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    """test_triage_certificate's tiny calibrated run (800 synthetic studies, a quarter held out for calibration,
    resnet10t at 64 px for 2 epochs: enough decided studies to certify 5%), trained as a user would: exporting."""
    from zoo.data import SyntheticSpec, ensure_synthetic

    root = ensure_synthetic(tmp_path_factory.mktemp("data") / "synthetic",
                            SyntheticSpec(n_train=800, n_test=200, unlabelled_fraction=0.0))
    out = tmp_path_factory.mktemp("exported") / "weights"
    p = run_script("train_all.py", "--data", root, "--models", "resnet10t", "--epochs", "2", "--recipe", "seed",
                   "--img-size", "64", "--lr", "2e-3", "--scheduler", "cosine", "--warmup-epochs", "0.1",
                   "--rotation", "0", "--translate", "0", "--calibration-fraction", "0.25", "--out", out,
                   "--quiet", cwd=out.parent, env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    return {"out": out, "data": root, "member": out / "resnet10t"}


@pytest.fixture(params=installed_runtimes())
def runtime(request, monkeypatch):
    """Each installed graph runtime as the one ``auto`` runs graphs on."""
    monkeypatch.setenv("BONE_ZOO_GRAPH_RUNTIME", RUNTIMES[request.param])
    return request.param


def test_default_backend_triage_is_certified_on_its_own_scores(exported_run, runtime, tmp_path):
    member = exported_run["member"]
    choice = choose(member, "auto")
    assert choice.runner is not None and choice.backend.startswith(runtime), choice.line("resnet10t")
    # without its own scores the drift rule refuses this backend (why the old code said NO GUARANTEE here)
    assert not choice.keeps_certificate, f"{choice.backend} drift {choice.drift}: this member does not test the change"
    rec = json.loads((member / "config.json").read_text())["export"]["scores"][choice.backend]
    cal = pd.read_csv(member / "calibration_predictions.csv", dtype={"id": str})
    assert rec["files"]["calibration"]["n_studies"] == len(cal) >= 200

    p = run_script("predict.py", "--data", exported_run["data"], "--models", exported_run["out"], "-output",
                   tmp_path / "p.csv", "--triage", "0.05", "--evaluate", "--quiet", cwd=tmp_path,
                   env={"OMP_NUM_THREADS": "1", "BONE_ZOO_GRAPH_RUNTIME": RUNTIMES[runtime]})
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"resnet10t: backend {choice.backend} (auto:" in p.stderr
    assert "NO GUARANTEE" not in p.stderr, p.stderr[-2000:]
    assert "guarantee with probability 0.90" in (tmp_path / "report.md").read_text()
    assert (pd.read_csv(tmp_path / "p.csv")["triage"] != "uncertain").any()

    # the stored scores are what predict's path computes on this backend for those studies
    ds = load_dataset(exported_run["data"])
    images = ds.train[ds.train["id"].isin(set(cal["id"]))]
    ens = Ensemble.from_paths([str(member)], backend="auto", precision="fp32")
    assert ens.choice(ens.members[0]).backend == choice.backend
    now = ens.predict_studies(images, cache_dir="", quiet=True).set_index("id")["resnet10t"]
    stored = pd.read_csv(member / score_file("calibration", choice.backend), dtype={"id": str}).set_index("id")
    assert set(stored.index) == set(cal["id"]) and np.abs(now.loc[stored.index] - stored["prob"]).max() <= 1e-5
    assert np.abs(cal.set_index("id").loc[stored.index, "prob"] - stored["prob"]).max() > 1e-5  # not torch's
    assert ens.fit_calibration(triage=0.05).certified


def _fit(member):
    ens = Ensemble.from_paths([str(member)], backend="auto")
    return ens, ens.fit_calibration(triage=0.05)


def _stale(member, backend, what):
    """Make ``member``'s stored ``backend`` scores stale in one way."""
    cfg_file = member / "config.json"
    cfg = json.loads(cfg_file.read_text())
    scores = cfg["export"]["scores"][backend]
    file = member / score_file("calibration", backend)
    if what == "missing":
        file.unlink()
    elif what == "changed":
        df = pd.read_csv(file, dtype={"id": str})
        df.loc[0, "prob"] = 1 - df.loc[0, "prob"]
        df.to_csv(file, index=False)
    elif what == "other runtime":  # as if stored by a runtime that computes these graphs otherwise
        scores["probe"] = [p + 1e-3 for p in scores["probe"]]
    elif what == "other graph":  # as if the graph was exported again after its scores were stored
        scores["graph_sha256"] = "0" * 64
    cfg_file.write_text(json.dumps(cfg))
    return {"missing": "missing", "changed": "changed since export", "other runtime": "computes",
            "other graph": "is not the graph"}[what]


@pytest.mark.parametrize("what", ["missing", "changed", "other runtime", "other graph"])
def test_stale_or_missing_backend_scores_fall_back_to_the_drift_rule(exported_run, runtime, what, tmp_path):
    member = shutil.copytree(exported_run["member"], tmp_path / "resnet10t")
    ens, fit = _fit(member)
    backend = ens.choice(ens.members[0]).backend
    assert fit.certified and fit.n_calibration >= 200  # fresh: fitted on the backend's own calibration scores
    said = _stale(member, backend, what)
    ens, fit = _fit(member)
    choice = ens.choice(ens.members[0])
    assert choice.backend == backend
    torch_cal = pd.read_csv(member / "calibration_predictions.csv", dtype={"id": str})
    used = ens.predictions(ens.members[0], "calibration")
    pd.testing.assert_frame_equal(used, torch_cal)  # the torch path's calibration scores, as before the change
    assert fit.certified == choice.keeps_certificate  # and the drift rule decides
    if not fit.certified:
        assert fit.warning.startswith(f"NO GUARANTEE: member resnet10t runs on {backend}, whose scores ")
        assert f"its own {backend} scores were not used" in fit.warning and said in fit.warning, fit.warning


def test_older_export_without_scores_keeps_the_drift_rule(exported_run, runtime, tmp_path):
    member = shutil.copytree(exported_run["member"], tmp_path / "resnet10t")
    cfg = json.loads((member / "config.json").read_text())
    del cfg["export"]["scores"]  # exported before scores were stored
    (member / "config.json").write_text(json.dumps(cfg))
    ens, fit = _fit(member)
    assert not ens.stored_scores(ens.members[0]).frames
    assert fit.certified == ens.choice(ens.members[0]).keeps_certificate
    assert not fit.certified and "export again" in fit.warning


def test_pushed_scores_are_pseudonymised_and_still_certify(exported_run, tmp_path):
    """The score files go up with the member (in its file set, study ids pseudonymised like the torch ones), and
    the pushed copy certifies as the local one: their digests do not depend on the study ids."""
    from zoo.hub import plan_push

    files = plan_push(exported_run["out"], "org/run").files
    backend = choose(exported_run["member"], "auto").backend
    rel = f"resnet10t/{score_file('calibration', backend)}"
    local = pd.read_csv(exported_run["member"] / score_file("calibration", backend), dtype={"id": str})
    pushed = pd.read_csv(io.BytesIO(files[rel]), dtype={"id": str})
    assert not set(pushed["id"]) & set(local["id"]) and len(pushed) == len(local)
    down = tmp_path / "pushed"
    for r, content in files.items():
        (down / r).parent.mkdir(parents=True, exist_ok=True)
        (down / r).write_bytes(content if isinstance(content, bytes) else content.read_bytes())
    ens, fit = _fit(down / "resnet10t")
    assert "calibration" in ens.stored_scores(ens.members[0]).frames and fit.certified


@pytest.mark.parametrize("backend", ["openvino-int8", "onnx-int8"])
def test_a_one_member_graph_prediction_starts_without_scikit_learn_or_onnx(exported_run, backend, tmp_path):
    """predict.py, calibrated, on one member's graph: neither scikit-learn (the calibrator's fit and the auto
    combiner's, ~1 s of start-up) nor the onnx package (the graph's freshness check, ~1 s) is imported; the
    calibration it applies is still the member's."""
    if backend.split("-")[0] not in installed_runtimes():
        pytest.skip(f"{backend}: runtime not installed")
    script = tmp_path / "imports.py"
    script.write_text("import sys\nimport predict\nrc = predict.main(predict.get_args_parser().parse_args("
                      "sys.argv[1:]))\nprint('LOADED', sorted({m.split('.')[0] for m in sys.modules} & "
                      "{'sklearn', 'onnx', 'torch'}))\nsys.exit(rc)\n")
    out = tmp_path / "p.csv"
    p = run_script(script, "--data", exported_run["data"], "--models", exported_run["out"], "--backend", backend,
                   "--quiet", "-output", out, cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "LOADED []" in p.stdout, p.stdout
    probs = pd.read_csv(out)["label"]
    assert probs.between(0, 1).all() and probs.nunique() > 10
