"""A triage certificate from untouched studies (issue 18, item 3).

Learn-then-Test guarantees "error among decided <= alpha with probability >= 1 - delta" only for calibration studies
that played no part in building the score. (a) simulates the whole selection path (best of several noisy epochs on
validation, each member's calibration and threshold on validation, the combiner fitted on validation) through
``Ensemble.calibrate``, and certifies once on a held-out calibration split and once on the selection studies;
(b) trains a tiny run on the synthetic radiographs with ``--calibration-fraction`` and runs ``predict.py --triage``.
"""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_script

from zoo.calibration import Triage, calibration_split, triage_summary
from zoo.combiners import _auc
from zoo.ensemble import Ensemble, Member
from zoo.metrics import best_threshold

ALPHA, SEEDS = 0.1, 200


def _member(folder, name, rng, z, y, splits, epochs=50, noise=10.0):
    """One simulated member: ``epochs`` noisy versions of the true logit ``z`` (fresh noise per study and epoch);
    the epoch with the best validation AUC is kept, its calibration and threshold fitted on validation, as training
    does. Writes the member folder (config.json, val_predictions.csv, calibration_predictions.csv); returns its
    (raw) test scores."""
    from zoo.calibration import Calibrator

    val, cal, test = splits
    ev = z[val][None] + rng.normal(0, noise, (epochs, len(val)))
    best = ev[int(np.argmax(_aucs(y[val], ev)))]  # the selection step
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    pv = sig(best)
    pc, pt = (sig(z[s] + rng.normal(0, noise, len(s))) for s in (cal, test))  # the same model on unseen studies
    folder.mkdir(parents=True)
    cfg = {"backbone": "resnet10t", "img_size": 64, "threshold": best_threshold(y[val], pv),
           "calibration": Calibrator.fit(y[val], pv).to_dict(), "metrics": {"val_auc": _auc(y[val], pv)},
           "training": {"folds": 1, "fold": 0}}
    (folder / "config.json").write_text(json.dumps(cfg))
    for file, idx, p in (("val_predictions.csv", val, pv), ("calibration_predictions.csv", cal, pc)):
        pd.DataFrame({"id": [f"s{i}" for i in idx], "label": y[idx], "prob": p}).to_csv(folder / file, index=False)
    return pt


def _aucs(y, scores):
    """The AUC of each row of ``scores`` (Mann-Whitney, ties count half; no NaN): one ranking for all epochs, the
    number ``zoo.combiners._auc`` gives each."""
    from scipy.stats import rankdata

    pos = y == 1
    n_pos = int(pos.sum())
    return (rankdata(scores, axis=1)[:, pos].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * (len(y) - n_pos))


def _one_thread(torch: bool = False):
    """BLAS and OpenMP (and with ``torch``, PyTorch's intra-op pool) limited to one thread: on fits of a few hundred
    studies and 64 px batches a second thread gains little on a quiet 2-core machine, and on a shared one its
    spin-waiting made the same work 3-5x slower (CPU and wall). Only the scheduling changes, not one number."""
    import sklearn.linear_model  # noqa: F401  (loads the BLAS and OpenMP libraries that threadpool_limits sets)
    from threadpoolctl import threadpool_limits

    if torch:
        import torch  # noqa: F401
    return threadpool_limits(1)


def _simulate(tmp_path, seed, n_val=200, n_cal=400, n_test=5000):
    rng = np.random.default_rng(seed)
    n = n_val + n_cal + n_test
    z = rng.normal(0, 10, n)  # true logit of each study
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    splits = (np.arange(n_val), np.arange(n_val, n_val + n_cal), np.arange(n_val + n_cal, n))
    test = pd.DataFrame({"id": [f"s{i}" for i in splits[2]], "label": y[splits[2]]})
    members = []
    for name in ("a", "b"):
        test[name] = _member(tmp_path / str(seed) / name, name, rng, z, y, splits)
        members.append(Member(name, tmp_path / str(seed) / name))
    ens = Ensemble(members, method="select")  # the combiner: fitted on the validation studies
    test["ensemble"] = ens.combine(test)
    certified = ens.calibrate(test, ALPHA)
    for m in members:  # the same run without a calibration split: certified on the selection studies
        (m.folder / "calibration_predictions.csv").unlink()
    selection = Ensemble(members, method="select").calibrate(test, ALPHA)
    return {k: (c, triage_summary(test["label"].to_numpy(), c.triage(c.studies["ensemble"].to_numpy())))
            for k, c in (("calibration", certified), ("selection", selection))}


def test_the_certificate_holds_on_a_calibration_split_and_fails_on_the_selection_studies(tmp_path):
    """Over 200 seeds: certified on the held-out calibration split, the test error among decided studies is <= alpha
    in >= 90% of seeds (1 - delta); certified on the validation studies that chose the epoch, the member
    calibration and threshold and the combiner, it is not (the selected scores look better on them than they are)."""
    over = {"calibration": 0, "selection": 0}
    shares = {"calibration": [], "selection": []}
    with _one_thread():
        for seed in range(SEEDS):
            for k, (c, s) in _simulate(tmp_path, seed).items():
                assert c.certified == (k == "calibration") and c.triage.certified == (k == "calibration")
                assert (c.n_calibration > 0) == (k == "calibration") and c.n_validation == 200
                over[k] += s["decided"] > 0 and s["error_among_decided"] > ALPHA
                shares[k].append(s["share_decided"])
    print(f"seeds with test error among decided > {ALPHA}: {over}; mean share decided: "
          f"{ {k: round(float(np.mean(v)), 3) for k, v in shares.items()} }")
    assert over["calibration"] / SEEDS <= 0.1, over
    assert over["selection"] / SEEDS > 0.1, over  # the old path: its "guarantee" does not hold
    assert np.mean(shares["calibration"]) > 0.1, shares  # and the certified triage does decide studies
    c, _ = _simulate(tmp_path, SEEDS)["selection"]
    assert "NO GUARANTEE" in c.warning and "--calibration-fraction" in c.warning


def test_calibration_split_is_grouped_stratified_and_seeded():
    rng = np.random.default_rng(0)
    rows = []
    for s in range(300):  # 100 patients, 3 studies each, 1-3 images per study
        for i in range(rng.integers(1, 4)):
            rows.append({"path": f"{s}/{i}.png", "id": f"study{s}", "part": "HAND", "label": float(s % 3 == 0),
                         "patient": f"p{s // 3}"})
    rows += [{"path": "u.png", "id": "unlabelled", "part": "HAND", "label": np.nan, "patient": "p0"}]
    images = pd.DataFrame(rows)
    rest, cal = calibration_split(images, 0.2, seed=1)
    assert set(rest["path"]) | set(cal["path"]) == set(images["path"]) and not set(rest["id"]) & set(cal["id"])
    assert not set(rest["patient"]) & set(cal["patient"]) - {"p0"}  # p0's unlabelled study stays in training
    assert "unlabelled" in set(rest["id"]) and cal["label"].notna().all()
    assert 0.15 <= cal["id"].nunique() / 300 <= 0.25
    assert cal.groupby("id")["label"].first().mean() == pytest.approx(1 / 3, abs=0.08)  # stratified
    again, _ = calibration_split(images, 0.2, seed=1)
    assert again.equals(rest)
    r0, c0 = calibration_split(images, 0, seed=1)
    assert r0 is images and c0.empty


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    """A tiny run with a calibration split on a larger synthetic set, small enough for a 2-core CI machine.

    The default synthetic set (320 studies) holds too few studies to certify 5%: Bonferroni over the 25 thresholds
    of the grid needs p <= 0.004, so at least 108 decided calibration studies without an error (0.95^n <= 0.004).
    Here 800 studies, a quarter (200) held out for calibration; one tiny backbone at 64 px for 2 epochs, the
    learning rate annealed within them (peak 2e-3, cosine), without rotation/translation augmentation (the
    generator already rotates and flips every film), which reaches validation AUC ~0.997-1.0 (seeds 0-2)."""
    from zoo.data import SyntheticSpec, ensure_synthetic

    root = ensure_synthetic(tmp_path_factory.mktemp("data") / "synthetic",
                            SyntheticSpec(n_train=800, n_test=200, unlabelled_fraction=0.0))
    out = tmp_path_factory.mktemp("calrun") / "weights"
    p = run_script("train_all.py", "--data", root, "--models", "resnet10t", "--epochs", "2", "--recipe", "seed",
                   "--img-size", "64", "--lr", "2e-3", "--scheduler", "cosine", "--warmup-epochs", "0.1",
                   "--rotation", "0", "--translate", "0", "--calibration-fraction", "0.25", "--no-export", "--out", out,
                   "--quiet", cwd=out.parent, env={"OMP_NUM_THREADS": "1"})  # see _one_thread
    assert p.returncode == 0, p.stderr[-3000:]
    return {"out": out, "data": root}


def test_triage_on_the_synthetic_radiographs_is_certified_and_decides_most_studies(calibrated_run, tmp_path):
    member = calibrated_run["out"] / "resnet10t"
    cfg = json.loads((member / "config.json").read_text())
    cal = pd.read_csv(member / "calibration_predictions.csv", dtype={"id": str})
    val = pd.read_csv(member / "val_predictions.csv", dtype={"id": str})
    assert cfg["training"]["n_calibration_studies"] == len(cal) >= 200 and cfg["metrics"]["val_auc"] >= 0.98
    assert not set(cal["id"]) & set(val["id"]) and cfg["training"]["calibration_fraction"] == 0.25
    with _one_thread(torch=True):
        p = run_script("predict.py", "--data", calibrated_run["data"], "--models", calibrated_run["out"], "-output",
                       tmp_path / "p.csv", "--triage", "0.05", "--evaluate", "--quiet", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "NO GUARANTEE" not in p.stderr
    df = pd.read_csv(tmp_path / "p.csv", dtype={"id": str})
    labels = pd.read_csv(calibrated_run["data"] / "test_labels.csv", dtype={"id": str})
    s = triage_summary(df.merge(labels, on="id", suffixes=("", "_true"))["label_true"].to_numpy(),
                       df["triage"].to_numpy())
    print(f"synthetic triage at 0.05: decided {s['decided']}/{s['n']} ({s['share_decided']:.2f}), error among "
          f"decided {s['error_among_decided']:.3f}")
    assert s["share_decided"] > 0.5 and s["error_among_decided"] <= 0.05
    assert "guarantee with probability 0.90" in (tmp_path / "report.md").read_text()


def test_triage_without_a_calibration_split_says_it_guarantees_nothing():
    t = Triage.fit(np.r_[np.zeros(150), np.ones(150)], np.r_[np.full(150, 0.01), np.full(150, 0.99)], 0.05,
                   certified=False)
    assert t.threshold <= 1 and not t.certified and "NO GUARANTEE" in t.warning() and "validation" in t.explain()
    assert Triage.fit(np.r_[0.0, 1.0], np.r_[0.2, 0.8], 0.05, certified=True).warning() == ""


def test_a_triage_on_tta_scores_is_not_certified(tmp_path):
    """The calibration studies' stored scores were made without test-time augmentation; --tta test scores average
    each image with its flip, so they are not exchangeable with them and Learn-then-Test guarantees nothing. The
    fit without --tta still certifies, and the two fits are kept apart."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 10, 1000)
    y = (rng.random(1000) < 1 / (1 + np.exp(-z))).astype(float)
    splits = (np.arange(200), np.arange(200, 600), np.arange(600, 1000))
    test = pd.DataFrame({"id": [f"s{i}" for i in splits[2]], "label": y[splits[2]]})
    test["a"] = _member(tmp_path / "a", "a", rng, z, y, splits)
    ens = Ensemble([Member("a", tmp_path / "a")])
    test["ensemble"] = ens.combine(test)
    with _one_thread():
        plain = ens.calibrate(test, ALPHA)
        tta = ens.calibrate(test, ALPHA, tta=True)
    assert plain.certified and plain.warning == ""
    assert not tta.certified and "NO GUARANTEE" in tta.warning and "--tta" in tta.warning
    assert ens.calibrate(test, ALPHA).certified  # the --tta fit did not replace the plain one
