"""Calibration (temperature scaling with a bias) and conformal triage (Learn-then-Test selective classification)."""

import numpy as np
import pytest

from zoo.calibration import Calibrator, Triage, brier, ece, ece_check, plot_reliability, triage_summary


def _overconfident(n, rng, sd=1.5, scale=3.0, shift=1.0):
    """True P(abnormal) = sigmoid(z); the scores are sigmoid(scale * z + shift): over-confident and shifted, the way
    a weighted-BCE network's outputs are."""
    z = rng.normal(0, sd, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    return y, 1 / (1 + np.exp(-(scale * z + shift)))


def test_calibration_lowers_ece_on_an_overconfident_set_and_keeps_the_ranking():
    rng = np.random.default_rng(0)
    y, p = _overconfident(400, rng)
    yt, pt = _overconfident(4000, rng)
    cal = Calibrator.fit(y, p)
    assert cal.temperature == pytest.approx(3.0, rel=0.25) and cal.bias == pytest.approx(1.0, abs=0.4)
    assert ece(yt, pt) > 0.12 and ece(yt, cal(pt)) < 0.04
    assert brier(yt, cal(pt)) < brier(yt, pt)
    assert (np.diff(cal(pt)[np.argsort(pt, kind="stable")]) >= 0).all()  # monotone: AUC unchanged
    assert np.isnan(cal(np.array([np.nan])))[0]
    assert Calibrator.from_dict(cal.to_dict()) == cal
    assert Calibrator.fit(np.ones(5), np.linspace(0.1, 0.9, 5)) == Calibrator(n=5)  # one class: identity


def test_calibration_stays_finite_on_separable_validation_scores():
    """A few dozen validation studies that the scores separate perfectly (the synthetic quick run): the plain maximum
    likelihood slope is unbounded and maps every score to 0 or 1; Platt's targets keep it finite and ordered."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30), np.ones(10)]
    p = np.r_[rng.uniform(0.05, 0.4, 30), rng.uniform(0.45, 0.9, 10)]
    cal = Calibrator.fit(y, p)
    q = cal(np.array([0.05, 0.167, 0.42, 0.9]))
    assert 0 < q[0] < q[1] < 0.1 and q[1] > 0.001 and 0.1 < q[2] < 0.9 and 0.9 < q[3] < 0.999  # ML: 1e-14 at 0.167
    assert ece(y, cal(p)) < ece(y, p)


def test_ece_check_tells_sampling_noise_from_miscalibration():
    """On calibrated scores the p-value is about uniform (rejects ~5% at 0.05) and the expected ECE matches what is
    observed; on the over-confident set it rejects every time."""
    rejected, observed, expected = 0, [], []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        p = 1 / (1 + np.exp(-rng.normal(-1.0, 1.2, 217)))  # a hand-radiograph-sized test split, ~30% abnormal
        y = (rng.random(217) < p).astype(float)
        c = ece_check(y, p, n_sim=500, seed=seed)
        assert c["ece"] == pytest.approx(ece(y, p)) and c["low"] <= c["expected"] <= c["high"] and c["n"] == 217
        rejected += c["p_value"] < 0.05
        observed.append(c["ece"])
        expected.append(c["expected"])
    assert rejected / 200 <= 0.1  # nominal 0.05, tolerance for 200 seeds
    assert np.mean(observed) == pytest.approx(np.mean(expected), rel=0.1)
    assert 0.03 < np.mean(expected) < 0.08  # a perfectly calibrated model shows this much ECE on 217 studies
    for seed in range(5):
        y, p = _overconfident(217, np.random.default_rng(seed))
        assert ece_check(y, p, n_sim=500)["p_value"] < 0.01
    assert np.isnan(ece_check(np.array([np.nan]), np.array([0.3]))["p_value"])


def test_reliability_diagram_with_consistency_bars(tmp_path):
    """Bins of one extreme study (their 90% range lies wholly above or below the bin's mean) and NaN rows draw."""
    rng = np.random.default_rng(0)
    p = np.r_[rng.uniform(0.1, 0.6, 60), 0.97, 0.02, np.nan]
    y = np.r_[(rng.random(60) < p[:60]).astype(float), 1.0, 0.0, 1.0]
    out = plot_reliability({"m": (y, p), "ensemble": (y, p)}, tmp_path / "r.png")
    assert out.stat().st_size > 5000


def test_triage_error_among_decided_stays_within_the_rate_over_many_seeds():
    """Guarantee: P(error among decided > alpha) <= delta over calibration sets. Tested on 200 seeds with 300
    calibration and 2000 test studies; tolerance 0.01 for the test set's own sampling noise."""
    alpha, over, shares = 0.05, 0, []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        y, p = _overconfident(300, rng, sd=4.0, scale=2.0)
        yt, pt = _overconfident(2000, rng, sd=4.0, scale=2.0)
        cal = Calibrator.fit(y, p)
        t = Triage.fit(y, cal(p), alpha)
        m = triage_summary(yt, t(cal(pt)))
        shares.append(m["share_decided"])
        over += m["decided"] > 0 and m["error_among_decided"] > alpha + 0.01
    assert over / 200 <= 0.1  # delta
    assert np.mean(shares) > 0.1  # it does decide studies when the scores allow it


def test_triage_abstains_when_nothing_can_be_guaranteed():
    rng = np.random.default_rng(1)
    y = (rng.random(200) < 0.5).astype(float)
    t = Triage.fit(y, rng.random(200), 0.05)  # scores unrelated to the labels
    assert t.threshold > 1 and set(t(rng.random(50))) == {"uncertain"}
    assert t.val_decided > 0 and t.val_error > 0.2 and "too many errors to guarantee" in t.explain()  # says why
    y, p = _overconfident(40, rng, sd=4.0, scale=1.0, shift=0.0)  # right, but too few to guarantee it
    t = Triage.fit(y, p, 0.05)
    assert t.threshold > 1 and t.val_error <= 0.05 and "too few studies" in t.explain()
    y, p = _overconfident(2000, rng, sd=4.0, scale=1.0, shift=0.0)  # calibrated and confident: decides
    t = Triage.fit(y, p, 0.05)
    assert t.threshold <= 1 and t.val_threshold == t.threshold and t.val_error <= 0.05 and t.val_decided > 500
    assert f"decided {t.val_decided}" in t.explain()
    with pytest.raises(ValueError):
        Triage.fit(y, rng.random(200), 0)


@pytest.mark.parametrize("n, separation", [(5, 3.0), (20, 0.5), (30, 10.0), (200, 2.0), (1000, 1.0)])
def test_platt_fit_is_the_weighted_logistic_regression_scikit_learn_fits(n, separation):
    """The calibrator's own Newton solver (no scikit-learn import at prediction time) finds scikit-learn's optimum,
    solved to a tight tolerance, on small, separable and large sets."""
    from sklearn.linear_model import LogisticRegression

    from zoo.calibration import platt_fit

    rng = np.random.default_rng(n)
    y = np.r_[0, 1, rng.integers(0, 2, n - 2)]
    z = rng.normal(size=n) + separation * y
    n_pos, n_neg = y.sum(), n - y.sum()
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    lr = LogisticRegression(C=1e6, tol=1e-12, max_iter=100_000).fit(
        np.r_[z, z][:, None], np.r_[np.ones(n), np.zeros(n)], sample_weight=np.r_[t, 1 - t])
    a, c = platt_fit(z, t)
    assert a == pytest.approx(lr.coef_[0, 0], abs=1e-6) and c == pytest.approx(lr.intercept_[0], abs=1e-6)


def test_best_threshold_is_youdens_j_on_scikit_learns_roc_curve():
    """The threshold chosen without scikit-learn is the one its roc_curve gives, on many random sets with and
    without tied scores (ties are where a hand-made ROC curve goes wrong), NaNs ignored, one class -> 0.5."""
    from sklearn.metrics import roc_curve

    from zoo.metrics import best_threshold

    rng = np.random.default_rng(0)
    for k in range(2000):
        n = int(rng.integers(2, 60))
        y = np.r_[0, 1, rng.integers(0, 2, n - 2)].astype(float)
        p = rng.random(n) if k % 2 else np.round(rng.random(n) * rng.choice([3, 10, 1000])) / 1000
        p = np.clip(p + y * rng.random() * 0.3, 0, 1)
        fpr, tpr, thr = roc_curve(y, p)
        want = float(min(max(thr[int(np.argmax(tpr - fpr))], 0.0), 1.0))
        assert best_threshold(np.r_[y, np.nan, 1], np.r_[p, 0.7, np.nan]) == want, (y, p)
    for y, p in [([0, 1, 0, 1], [0.3] * 4), ([0, 1], [0.2, 0.2]), ([0, 1, 1], [0.2, 0.2, 0.9]), ([1, 0], [0.1, 0.9])]:
        fpr, tpr, thr = roc_curve(y, p)  # all scores tied, or two distinct ones: nothing to drop
        assert best_threshold(y, p) == float(min(max(thr[int(np.argmax(tpr - fpr))], 0.0), 1.0))
    assert best_threshold(np.zeros(5), np.linspace(0, 1, 5)) == 0.5
