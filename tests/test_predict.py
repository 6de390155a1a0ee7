"""predict.py and the ensemble: the competition CSV, ensemble modes, the evaluation report, bad input."""

import json
import re
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import REFERENCE_CSV, RUN_SIZE, SHARED_DATA, TINY, run_script
from PIL import Image

from zoo.data import load_dataset, studies
from zoo.ensemble import Ensemble, MemberError
from zoo.metrics import aggregate_studies, binary_metrics


@pytest.fixture(scope="module")
def run(trained_run):
    assert trained_run["proc"].returncode == 0, trained_run["proc"].stderr[-2000:]
    return trained_run


def test_single_dash_output_writes_the_competition_csv(run, tmp_path):
    args = ["--data", run["data"], "--models", run["out"], "--quiet"]
    p1 = run_script("predict.py", *args, "-output", tmp_path / "a.csv", cwd=tmp_path)
    assert p1.returncode == 0, p1.stderr
    p2 = run_script("predict.py", *args, "--output", tmp_path / "b.csv", cwd=tmp_path)
    assert p2.returncode == 0, p2.stderr
    a = pd.read_csv(tmp_path / "a.csv")
    assert list(a.columns) == ["id", "label"]
    if REFERENCE_CSV.is_file():  # the competition's own header
        assert list(a.columns) == list(pd.read_csv(REFERENCE_CSV, nrows=1).columns)
    expected = sorted(load_dataset(run["data"]).test["id"].unique())
    assert a["id"].tolist() == expected  # every test study once, sorted
    assert a["label"].between(0, 1).all()
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()  # deterministic


def test_default_models_are_every_member_under_weights(run, tmp_path):
    shutil.copytree(run["out"], tmp_path / "weights")
    p = run_script("predict.py", "--data", run["data"], "-output", "p.csv", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert all(name in p.stderr for name in TINY)


def test_ensemble_modes(run):
    ds = load_dataset(run["data"])
    ens = Ensemble.from_paths([str(run["out"])])
    st = ens.predict_studies(ds.test, quiet=True)
    assert ens.names == sorted(TINY)
    # mean: the mean of the members' own outputs, member by member
    own = [Ensemble.from_paths([str(run["out"] / n)]).predict_studies(ds.test, quiet=True)["ensemble"] for n in TINY]
    assert np.allclose(st["ensemble"], np.mean(own, axis=0))
    img = st.attrs["image_predictions"]
    assert np.allclose(st[TINY[0]], aggregate_studies(img, TINY[0])[TINY[0]])
    ens.use_combiner("weighted")
    w = np.array([m.val_auc for m in ens.members])
    assert np.allclose(ens.combine(st), st[ens.names].to_numpy() @ (w / w.sum()))
    ens.use_combiner("rank")
    r = ens.combine(st)
    assert r.between(0, 1).all()
    val = ens.validation_studies(calibrated=True)  # each member's score -> its validation percentile (ties half)
    pct = [(val[m.name].to_numpy()[None] < m.calibrator(st[m.name].to_numpy())[:, None]).mean(axis=1)
           + (val[m.name].to_numpy()[None] == m.calibrator(st[m.name].to_numpy())[:, None]).mean(axis=1) / 2
           for m in ens.members]
    assert np.allclose(r, np.mean(pct, axis=0))
    assert np.allclose([ens.combine(st.iloc[[i]]).iloc[0] for i in range(len(st))], r)  # each study on its own
    mx = Ensemble.from_paths([str(run["out"])]).predict_studies(ds.test, aggregate="max", quiet=True)
    assert (mx[TINY[0]] >= st[TINY[0]] - 1e-9).all()


def test_evaluate_writes_report_and_roc_from_the_csv_scores(run, tmp_path):
    p = run_script("predict.py", "--data", run["data"], "--models", run["out"], "-output", tmp_path / "p.csv",
                   "--evaluate", "--binary", "--ensemble", "weighted", "--tta", "--quiet", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    report = (tmp_path / "report.md").read_text()
    assert (tmp_path / "roc.png").stat().st_size > 5000
    csv = pd.read_csv(tmp_path / "p.csv")
    assert set(csv["abnormal"]) <= {0, 1}
    truth = studies(load_dataset(run["data"]).test).set_index("id")["label"]
    m = binary_metrics(truth[csv["id"]].to_numpy(), csv["label"].to_numpy())
    row = next(line for line in report.splitlines() if line.startswith("| ensemble"))
    assert f"{m['auc']:.3f}" in row  # the ensemble row is computed from the CSV's numbers
    assert m["auc"] > 0.8  # and the ensemble really separates the synthetic test studies
    for part in ("HAND", "WRIST", "FOREARM"):
        assert re.search(rf"\| ensemble +\| {part}", report)
    assert all(f"| {n}" in report for n in TINY)


def test_unreadable_images_are_listed_and_studies_kept(run, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(run["data"], data)
    test_files = sorted((data / "test").iterdir())
    multi = next(f for f in test_files if f.stem.endswith("_image2"))  # its study keeps image1
    multi.write_bytes(b"garbage")
    single_id = "HAND_00000000ff"
    (data / "test" / f"{single_id}_image1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated to nothing")
    p = run_script("predict.py", "--data", data, "--models", run["out"], "-output", tmp_path / "p.csv",
                   "--quiet", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "skipped 2 unreadable" in p.stderr and multi.name in p.stderr
    assert single_id in p.stderr and "no readable image" in p.stderr
    csv = pd.read_csv(tmp_path / "p.csv").set_index("id")
    study = "_".join(multi.stem.split("_")[:2])
    assert csv.loc[single_id, "label"] == 0.5 and 0 <= csv.loc[study, "label"] <= 1
    assert len(csv) == len({"_".join(f.stem.split("_")[:2]) for f in (data / "test").iterdir()})


@pytest.mark.parametrize("case", ["empty", "nolabels", "unknown", "missing-data"])
def test_misuse_gives_one_clear_message(run, tmp_path, case):
    (tmp_path / "empty" / "test").mkdir(parents=True)
    (tmp_path / "empty" / "train").mkdir()
    args = {"empty": ["--data", tmp_path / "empty", "--models", run["out"]],
            "nolabels": ["--data", tmp_path / "empty", "--models", run["out"], "--evaluate"],
            "unknown": ["--data", run["data"], "--models", "densenet*"],
            "missing-data": ["--models", run["out"]]}[case]
    p = run_script("predict.py", *args, "-output", tmp_path / "p.csv", cwd=tmp_path)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    expected = {"empty": "no test images", "nolabels": "no test images", "unknown": "matches no member",
                "missing-data": "--data"}[case]
    assert expected in p.stderr
    assert not (tmp_path / "p.csv").exists()


def test_member_with_mismatched_weights_is_one_clear_error(run, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(run["out"] / TINY[0], bad)
    c = json.loads((bad / "config.json").read_text())
    c["head_hidden"] = [8]
    (bad / "config.json").write_text(json.dumps(c))
    with pytest.raises(MemberError, match="weights do not match its config.json"):
        Ensemble.from_paths([str(bad)])


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data/fracatlas-hand not present")
def test_runs_over_fracatlas_test_split(run, tmp_path):
    p = run_script("predict.py", "--data", SHARED_DATA, "--models", run["out"], "-output", tmp_path / "f.csv",
                   "--evaluate", "--quiet", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    csv = pd.read_csv(tmp_path / "f.csv")
    labels = pd.read_csv(SHARED_DATA / "test_labels.csv")
    assert sorted(csv["id"]) == sorted(labels["id"]) and csv["label"].between(0, 1).all()
    assert "| ensemble" in (tmp_path / "report.md").read_text()


def test_cam_dir_writes_an_overlay_per_image_and_member(run, tmp_path):
    data = tmp_path / "d"
    (data / "test").mkdir(parents=True)
    for f in sorted((run["data"] / "test").iterdir())[:3]:
        shutil.copy(f, data / "test")
    p = run_script("predict.py", "--data", data, "--models", run["out"], "-output", tmp_path / "p.csv",
                   "--cam-dir", tmp_path / "cams", "--quiet", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for n in TINY:
        files = sorted((tmp_path / "cams" / n).glob("*.png"))
        assert len(files) == 3
        with warnings.catch_warnings():
            assert np.asarray(Image.open(files[0])).shape == (RUN_SIZE, RUN_SIZE, 3)


def test_calibrated_scores_triage_column_and_report(run, tmp_path):
    """Default: calibrated scores; --no-calibrate: the raw ones (a monotone map apart, per member); --triage adds a
    column from {normal, abnormal, uncertain}; report.md carries ECE, Brier, a reliability diagram and triage."""
    args = ["--data", run["data"], "--models", run["out"], "--quiet", "--evaluate"]
    p = run_script("predict.py", *args, "--triage", "0.05", "-output", tmp_path / "cal.csv", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    cal = pd.read_csv(tmp_path / "cal.csv")
    assert list(cal.columns) == ["id", "label", "triage"]
    assert set(cal["triage"]) <= {"normal", "abnormal", "uncertain"}
    report = (tmp_path / "report.md").read_text()
    assert "| ece" in report.replace("|   ece", "| ece") and "## Triage" in report and "ensemble_raw" in report
    assert (tmp_path / "reliability.png").stat().st_size > 5000
    metrics = pd.read_csv(tmp_path / "metrics.csv")  # the ECE next to what a calibrated model would show here
    assert metrics["ece_if_calibrated"].between(0, 1).all() and metrics["ece_p"].between(0, 1).all()
    assert "ece_if_calibrated" in report and "on the " in report.split("## Triage")[1]  # what validation showed
    p = run_script("predict.py", *args, "--no-calibrate", "-output", tmp_path / "raw.csv", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    raw = pd.read_csv(tmp_path / "raw.csv")
    assert list(raw.columns) == ["id", "label"] and not np.allclose(raw["label"], cal["label"])
    p = run_script("predict.py", *args, "--no-calibrate", "--triage", "0.05", "-output", tmp_path / "x.csv",
                   cwd=tmp_path)
    assert p.returncode == 2 and "drop --no-calibrate" in p.stderr and not (tmp_path / "x.csv").exists()


def test_cache_options_are_arguments_of_every_decode_not_the_environment(run, tmp_path, monkeypatch):
    """--cache-dir and --cache-max-gb reach every decode of a run, the members' and --cam-dir's, as arguments; the
    process environment is left alone (the CLI used to set BONE_ZOO_CACHE_MAX_GB for whatever ran next in the
    process, and --cam-dir decoded into the default cache whatever --cache-dir said)."""
    import os

    import zoo.ensemble

    calls, real = [], zoo.ensemble.load_images

    def spy(paths, size, cache_dir=None, **kw):
        calls.append((cache_dir, kw.get("max_gb")))
        return real(paths, size, cache_dir, **kw)

    monkeypatch.setattr(zoo.ensemble, "load_images", spy)
    monkeypatch.delenv("BONE_ZOO_CACHE_MAX_GB", raising=False)
    cache = tmp_path / "cache"
    p = run_script("predict.py", "--data", run["data"], "--models", run["out"], "--quiet", "--cache-dir", cache,
                   "--cache-max-gb", "0.5", "--cam-dir", tmp_path / "cams", "-output", tmp_path / "p.csv",
                   cwd=tmp_path)
    leaked = os.environ.pop("BONE_ZOO_CACHE_MAX_GB", None)
    assert p.returncode == 0, p.stderr
    assert leaked is None
    assert len(calls) >= 2 and set(calls) == {(str(cache), 0.5)}, calls


def test_members_store_their_calibration(run):
    from zoo.calibration import Calibrator
    from zoo.members import read_member_config

    for name in TINY:
        cfg = read_member_config(run["out"] / name)
        cal = Calibrator.from_dict(cfg["calibration"])
        assert cal.n == cfg["metrics"]["n_val_studies"] and cal.temperature > 0
        assert 0 <= cfg["metrics"]["val_ece"] <= 1


def test_calibrated_threshold_is_chosen_on_validation_for_every_combiner(run):
    """The calibrated ensemble threshold is Youden's J on the calibrated validation scores, whatever the combiner
    (a rank ensemble included: combining one row of member thresholds would rank it 1.0)."""
    from zoo.metrics import best_threshold

    ds = load_dataset(run["data"])
    for method in ("mean", "weighted", "rank"):
        ens = Ensemble.from_paths([str(run["out"])], method=method)
        st = ens.predict_studies(ds.test, quiet=True)
        cal = ens.calibrate(st)
        val = ens.validation_studies()
        for m in ens.members:
            val[m.name] = m.calibrator(val[m.name].to_numpy(dtype=float))
        score = ens.combine(val, calibrated=True).to_numpy()
        expected = best_threshold(val["label"].to_numpy(), cal.calibrator(score))
        assert cal.threshold == pytest.approx(expected) and 0 < cal.threshold < 1, method
