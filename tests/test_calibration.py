"""Calibration (temperature scaling with a bias) and conformal triage (Learn-then-Test selective classification)."""

import numpy as np
import pytest

from zoo.calibration import Calibrator, Triage, brier, ece, triage_summary


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
    with pytest.raises(ValueError):
        Triage.fit(y, rng.random(200), 0)
