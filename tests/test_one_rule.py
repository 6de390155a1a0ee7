"""One decision rule on every path, and no silent fallbacks (review of issue 18): the triage labels a study as
``--binary`` does (``is_abnormal`` at the ensemble's threshold); a triage never claims a guarantee it may not have
(``Triage.fit``'s default, the demo); pseudo-labels never see the calibration split; ``--calibration-fraction``
refuses what it cannot hold out and the card says what was; a study with no readable image gets no ``--binary``
verdict; a one-class validation split and NaN validation scores are refused or skipped, not passed on.
Simulated members (config.json + prediction CSVs, no weights) or tiny untrained ones; no training."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zoo.calibration import Calibrator, Triage, auto_calibration_fraction, calibration_split, triage_summary
from zoo.ensemble import Ensemble, Member
from zoo.metrics import best_threshold, is_abnormal


def _sig(a):
    return 1 / (1 + np.exp(-a))


def _write_member(folder: Path, y: np.ndarray, z: np.ndarray, val: np.ndarray, cal: np.ndarray | None,
                  rng: np.random.Generator, noise: float = 1.0, model=None) -> Path:
    """A member folder whose validation (and calibration) predictions are noisy versions of the true logit ``z``;
    with ``model`` (a BoneClassifier) its weights are saved too."""
    pv = _sig(z[val] + rng.normal(0, noise, len(val)))
    training = {"folds": 1, "fold": 0}
    extra = {"threshold": best_threshold(y[val], pv), "calibration": Calibrator.fit(y[val], pv).to_dict(),
             "metrics": {"val_auc": 0.9}, "training": training}
    if model is not None:
        model.threshold, model.calibration, model.metrics = extra["threshold"], extra["calibration"], extra["metrics"]
        model.training_config = training
        model.save_member(folder)
    else:
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"backbone": "resnet10t", "img_size": 32, **extra}))
    pd.DataFrame({"id": [f"s{i}" for i in val], "label": y[val], "prob": pv}).to_csv(folder / "val_predictions.csv",
                                                                                    index=False)
    if cal is not None:
        pc = _sig(z[cal] + rng.normal(0, noise, len(cal)))
        pd.DataFrame({"id": [f"s{i}" for i in cal], "label": y[cal], "prob": pc}).to_csv(
            folder / "calibration_predictions.csv", index=False)
    return folder


def _population(seed: int, n: int = 3000):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4, n)
    y = (rng.random(n) < _sig(z)).astype(float)
    return rng, z, y


# --- 1. one verdict ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("thr", [0.2, 0.35, 0.5, 0.6, 0.8])
def test_triage_labels_are_the_binary_verdict_at_the_ensemble_threshold(thr):
    rng, z, y = _population(0)
    p = _sig(z)  # calibrated
    t = Triage.fit(y[:1000], p[:1000], 0.05, decision_threshold=thr, certified=True)
    assert t.threshold <= 1 and t.decision_threshold == thr
    verdicts = t(p[1000:])
    decided = verdicts != "uncertain"
    assert decided.mean() > 0.3
    assert ((verdicts[decided] == "abnormal") == is_abnormal(p[1000:][decided], thr)).all()
    s = triage_summary(y[1000:], verdicts)
    assert s["error_among_decided"] <= 0.05 + 0.01
    again = Triage.from_dict(json.loads(json.dumps(t.to_dict())))
    assert again == t and (again(p[1000:]) == verdicts).all()
    with pytest.raises(ValueError, match="decision threshold"):
        t(p, decision_threshold=thr + 0.1)


def test_the_reviewers_example_no_longer_gives_two_verdicts():
    t = Triage(alpha=0.05, threshold=0.6, decision_threshold=0.35)
    # is_abnormal(0.38, 0.35): abnormal; the old triage called it normal (confidence 0.62 on the 0.5 side)
    assert is_abnormal(0.38, 0.35) and t([0.38])[0] != "normal"
    assert list(t([0.7, 0.2, 0.5])) == ["abnormal", "normal", "uncertain"]
    assert Triage.from_dict({"alpha": 0.05, "threshold": 0.6}).decision_threshold == 0.5  # an older record


def test_triage_fit_claims_no_guarantee_by_default():
    t = Triage.fit(np.r_[np.zeros(150), np.ones(150)], np.r_[np.full(150, 0.01), np.full(150, 0.99)], 0.05)
    assert not t.certified and "NO GUARANTEE" in t.warning()


def _simulated_run(tmp_path: Path, seed: int = 0, cal: bool = True) -> list[Member]:
    rng, z, y = _population(seed)
    val, cal_idx = np.arange(0, 400), np.arange(400, 1000)
    members = []
    for name in ("a", "b"):
        _write_member(tmp_path / name, y, z, val, cal_idx if cal else None, rng)
        members.append(Member(name, tmp_path / name))
    return members


def _predict_main(tmp_path, monkeypatch, members, *extra) -> pd.DataFrame:
    """predict.py's main() over simulated members: the dataset and the members' image scores are stubbed (test
    studies s1000..s2999, one image each, scored like the validation ones), the rest is predict.py's own path."""
    from zoo.cli import predict

    rng, z, y = _population(0)
    ids = [f"s{i}" for i in range(1000, 3000)]
    test = pd.DataFrame({"path": [f"{i}.png" for i in ids], "id": ids, "part": "HAND", "label": np.nan})
    studies = test[["id", "part", "label"]].copy()
    for m in members:
        studies[m.name] = _sig(z[1000:] + rng.normal(0, 1.0, 2000))
    studies.loc[0, [m.name for m in members]] = np.nan  # a study with no readable image
    ens = Ensemble(members, method="mean")
    images = test.merge(studies.drop(columns=["part", "label"]), on="id")  # one image per study: its score

    def predict_chunked(ens_, imgs, *a, **kw):  # predict.py's scoring seam (zoo.sharding): the stubbed scores
        assert ens_ is ens and imgs["path"].tolist() == images["path"].tolist()
        return images.copy(), {}

    monkeypatch.setattr(predict, "predict_chunked", predict_chunked)
    monkeypatch.setattr(predict, "load_dataset", lambda root: SimpleNamespace(test=test, notes=[], root=Path(root),
                                                                               name="simulated"))
    monkeypatch.setattr(predict.Ensemble, "from_paths", classmethod(lambda cls, *a, **k: ens))
    out = tmp_path / "p.csv"
    args = predict.get_args_parser().parse_args(["--data", str(tmp_path), "-output", str(out), "--binary",
                                                 "--triage", "0.1", "--quiet", *extra])
    assert predict.main(args) == 0
    return pd.read_csv(out, dtype={"id": str}, keep_default_na=False)


@pytest.mark.parametrize("threshold", [[], ["--threshold", "0.97"], ["--threshold", "0.08"]])
def test_a_triage_decided_study_has_the_binary_label(tmp_path, monkeypatch, threshold):
    df = _predict_main(tmp_path, monkeypatch, _simulated_run(tmp_path / "run"), *threshold)
    decided = df[df["triage"] != "uncertain"]
    assert len(decided) > 200
    assert ((decided["triage"] == "abnormal").astype(int).astype(str) == decided["abnormal"]).all()


# --- 6. no verdict without an image -----------------------------------------------------------------------------

def test_a_study_with_no_readable_image_has_no_binary_verdict(tmp_path, monkeypatch):
    # a threshold under --missing-value's 0.5: the filled score would read abnormal = 1
    df = _predict_main(tmp_path, monkeypatch, _simulated_run(tmp_path / "run"), "--threshold", "0.3")
    unreadable = df[df["id"] == "s1000"].iloc[0]
    assert float(unreadable["label"]) == 0.5 and unreadable["abnormal"] == "" and unreadable["triage"] == "uncertain"
    assert set(df.loc[df["id"] != "s1000", "abnormal"]) == {"0", "1"}


# --- 2. the demo says when there is no guarantee ----------------------------------------------------------------

@pytest.mark.parametrize("with_split", [False, True])
def test_the_demo_claims_a_guarantee_only_when_certified(tmp_path, with_split):
    import torch

    from demo.app import MemberPool, analyse, summary_markdown
    from zoo.model import BoneClassifier

    rng, z, y = _population(1)
    torch.manual_seed(0)
    folder = _write_member(tmp_path / "m", y, z, np.arange(400), np.arange(400, 1000) if with_split else None, rng,
                           model=BoneClassifier("resnet10t", img_size=32, head_hidden=[8]))
    Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(tmp_path / "x.png")
    a = analyse([str(tmp_path / "x.png")], ["m"], "Grad-CAM", MemberPool({"m": folder}), "mean", 0.1)
    md = summary_markdown(a)
    if with_split:
        assert "guaranteed" in md and "NO GUARANTEE" not in md
    else:
        assert "NO GUARANTEE" in md and "is guaranteed" not in md and "--calibration-fraction" in md
    assert a.certified == with_split


def _count_fits(monkeypatch) -> list[str]:
    """Every Calibrator.fit and Triage.fit from now on, by name (the ensemble calibration's and triage's fits)."""
    fits: list[str] = []
    for cls in (Calibrator, Triage):
        real = cls.fit.__func__

        def counted(c, *a, _real=real, _name=cls.__name__, **k):
            fits.append(_name)
            return _real(c, *a, **k)

        monkeypatch.setattr(cls, "fit", classmethod(counted))
    return fits


def test_the_demo_fits_the_ensemble_calibration_once_per_kept_ensemble(tmp_path, monkeypatch):
    """A second request with the same members (in any order) reuses the kept ensemble's calibration and triage:
    nothing is refitted, and the answer is the same."""
    import torch

    from demo.app import MemberPool, analyse
    from zoo.model import BoneClassifier

    rng, z, y = _population(1)
    torch.manual_seed(0)
    folders = {n: _write_member(tmp_path / n, y, z, np.arange(400), np.arange(400, 1000), rng,
                                model=BoneClassifier("resnet10t", img_size=32, head_hidden=[8])) for n in ("m", "k")}
    Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(tmp_path / "x.png")
    pool = MemberPool(folders)
    first = analyse([str(tmp_path / "x.png")], ["m", "k"], "Grad-CAM", pool, "mean", 0.1)
    fits = _count_fits(monkeypatch)
    again = analyse([str(tmp_path / "x.png")], ["k", "m"], "Grad-CAM", pool, "mean", 0.1)
    assert fits == []
    assert (again.probability, again.threshold, again.triage) == (first.probability, first.threshold, first.triage)
    analyse([str(tmp_path / "x.png")], ["k", "m"], "Grad-CAM", pool, "mean", 0.05)  # another rate: its own fit
    assert fits == ["Calibrator", "Triage"]


def test_calibrate_fits_once_per_options_and_again_after_use_combiner(tmp_path, monkeypatch):
    """Ensemble.calibrate's fit does not depend on the studies: it is made once per (triage, threshold, split) and
    applied to any table; use_combiner() drops it (it was fitted on the previous combiner's scores)."""
    members = _simulated_run(tmp_path)
    rng, z, y = _population(0)
    studies = pd.DataFrame({"id": [f"t{i}" for i in range(50)], "part": "HAND", "label": y[2000:2050]})
    for m in members:
        studies[m.name] = _sig(z[2000:2050] + rng.normal(0, 1, 50))
    ens = Ensemble(members, method="weighted")
    studies["ensemble"] = ens.combine(studies)
    fits = _count_fits(monkeypatch)
    a = ens.calibrate(studies, 0.1)
    b = ens.calibrate(studies.iloc[:7], 0.1)
    assert fits == ["Calibrator", "Triage"] and a.threshold == b.threshold and a.triage is b.triage
    np.testing.assert_allclose(b.studies["ensemble"], a.studies["ensemble"].iloc[:7])
    ens.calibrate(studies, 0.1, threshold=0.4)
    assert fits == ["Calibrator", "Triage"] * 2
    ens.use_combiner("rank")
    assert ens.method == "rank" and ens.combiner.name == "rank"
    fresh = Ensemble(members, method="rank").calibrate(studies, 0.1)
    c = ens.calibrate(studies, 0.1)
    np.testing.assert_allclose(c.studies["ensemble"], fresh.studies["ensemble"])
    assert c.threshold == fresh.threshold and c.member_thresholds == fresh.member_thresholds
    with pytest.raises(AttributeError):
        ens.method = "mean"  # read-only: use_combiner() says what it does


def test_calibrated_member_thresholds_are_the_reports(tmp_path, monkeypatch):
    """The calibrated member thresholds are computed once, by the ensemble: each member's stored threshold through
    its own calibration; the report's member rows are exactly those."""
    from zoo.cli import predict

    members = _simulated_run(tmp_path)
    ens = Ensemble(members, method="mean")
    st = pd.DataFrame({"id": ["t0", "t1"], "part": "HAND", "label": [0.0, 1.0], "a": [0.2, 0.9], "b": [0.3, 0.8]})
    st["ensemble"] = ens.combine(st)
    cal = ens.calibrate(st)
    assert cal.member_thresholds == {m.name: pytest.approx(float(m.calibrator([m.threshold])[0])) for m in members}
    thresholds = predict.Prediction(cal.studies, ens, cal.threshold, cal).thresholds
    assert {k: thresholds[k] for k in ("a", "b")} == cal.member_thresholds
    assert thresholds["ensemble"] == cal.threshold and thresholds["ensemble_raw"] == ens.threshold
    raw = predict.Prediction(st, ens, ens.threshold).thresholds
    assert {k: raw[k] for k in ("a", "b")} == {m.name: m.threshold for m in members}


# --- 3. pseudo-labels never see the calibration split -----------------------------------------------------------

def test_pseudo_labels_do_not_depend_on_the_calibration_split(tmp_path):
    from zoo.semisupervised import pseudo_labels

    members = _simulated_run(tmp_path)
    rng, z, _ = _population(0)
    ids = [f"u{i}" for i in range(300)]
    unlabelled = pd.DataFrame({"path": [f"{i}.png" for i in ids], "id": ids, "part": "HAND", "label": np.nan})
    scores = _sig(rng.normal(0, 4, 300) + rng.normal(0, 1, 300))

    def labels() -> pd.DataFrame:
        ens = Ensemble([Member(m.name, m.folder) for m in members], method="mean")  # files read afresh

        def predict_studies(images, **kw):
            st = images.groupby("id", sort=True).agg(part=("part", "first"), label=("label", "first")).reset_index()
            for m in ens.members:
                st[m.name] = scores
            st["ensemble"] = ens.combine(st)
            return st

        ens.predict_studies = predict_studies
        rows, record = pseudo_labels(ens, unlabelled, min_confidence=0.8)
        assert record["pseudo_labelled_studies"] > 0
        return rows

    before = labels()
    for m in members:  # another calibration split: overconfident scores
        f = m.folder / "calibration_predictions.csv"
        cal = pd.read_csv(f)
        cal["prob"] = _sig(4 * np.log(cal["prob"] / (1 - cal["prob"])))
        cal.to_csv(f, index=False)
    pd.testing.assert_frame_equal(before, labels())
    ens = Ensemble(members, method="mean")
    st = pd.DataFrame({"id": ["x"], "a": [0.7], "b": [0.8]})
    st["ensemble"] = ens.combine(st)
    c = ens.calibrate(st, 0.1, use_calibration_split=False)
    assert c.n_calibration == 0 and not c.certified and ens.calibrate(st, 0.1).certified


# --- 5. the calibration fraction ----------------------------------------------------------------------------------

def _images(n: int = 300) -> pd.DataFrame:
    return pd.DataFrame({"path": [f"{s}.png" for s in range(n)], "id": [f"study{s}" for s in range(n)],
                         "part": "HAND", "label": [float(s % 3 == 0) for s in range(n)]})


@pytest.mark.parametrize("fraction", [0.6, 0.75, 1.2])
def test_a_calibration_fraction_over_a_half_is_refused(fraction):
    with pytest.raises(ValueError, match=r"--calibration-fraction must be in \[0, 0.5\]"):
        calibration_split(_images(), fraction)
    with pytest.raises(ValueError, match="more than half"):
        auto_calibration_fraction(_images(), fraction)


@pytest.mark.parametrize("fraction, share", [(0.3, 1 / 3), (0.4, 0.5), (0.25, 0.25)])
def test_the_share_actually_held_out_is_recorded_and_carded(fraction, share):
    from zoo.calibration import calibration_share
    from zoo.model import BoneClassifier

    images = _images()
    _, cal = calibration_split(images, fraction)
    got = calibration_share(images, cal)
    assert got == pytest.approx(share, abs=0.01)
    training = {"recipe": "seed", "calibration_fraction": fraction, "calibration_share": got,
                "n_calibration_studies": cal["id"].nunique()}
    text = BoneClassifier("resnet10t", img_size=32, head_hidden=[8], training=training).generate_model_card().text
    assert (f"Calibration split: {got:g} of labelled studies ({cal['id'].nunique()} studies), held out"
            in text) and f"(requested {fraction:g})" in text


# --- 8. a one-class validation split ----------------------------------------------------------------------------

def test_a_grouped_validation_split_with_one_class_is_refused():
    from zoo.data.split import split_by_study

    rows = []  # 4 patients, 2 studies each; only p0's are abnormal: every patient-whole split has one class in val
    for p in range(4):
        for s in range(2):
            rows.append({"path": f"p{p}s{s}.png", "id": f"p{p}s{s}", "part": "HAND", "label": float(p == 0),
                         "patient": f"p{p}"})
    with pytest.raises(ValueError, match="both classes on both sides"):
        split_by_study(pd.DataFrame(rows), 0.2)


# --- 9. NaN validation scores -----------------------------------------------------------------------------------

def test_nan_validation_scores_are_skipped_by_the_threshold_and_rank():
    from zoo.combiners import create_combiner

    y = np.r_[0, 0, 1, 1, 0, 1.0]
    p = np.r_[0.1, 0.4, 0.35, 0.8, np.nan, np.nan]
    assert best_threshold(y, p) == best_threshold(y[:4], p[:4])
    x = np.c_[p, np.r_[0.2, 0.3, 0.6, 0.9, np.nan, 0.7]]
    x[5, 1] = np.nan  # a study no member scored
    members = [SimpleNamespace(val_auc=0.9, threshold=0.5)] * 2
    r = create_combiner("rank", members).fit(x, y)
    assert 0 <= r.threshold() <= 1
