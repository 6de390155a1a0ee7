"""DeLong AUC variance and paired test, bootstrap intervals and the sentence of a comparison (zoo.stats)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from zoo.stats import auc_ci, bootstrap_metrics, delong, delong_test, describe_difference, intervals, wilson


def _scores(n: int, seed: int, shift: float = 1.0, noise2: float = 0.7):
    """Labels and two correlated score columns (shared signal + own noise) on n studies."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    common = y * shift + rng.normal(size=n)
    return y, common + 0.3 * rng.normal(size=n), common + noise2 * rng.normal(size=n)


def _delong_1988(y, a, b):
    """DeLong et al. (1988) written out pair by pair, O(m n): the reference the fast algorithm must match."""
    y = np.asarray(y)
    comps = []
    for s in (a, b):
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        comps.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    m, n = (y == 1).sum(), (y == 0).sum()
    s10 = np.cov(np.vstack([c[1] for c in comps]))
    s01 = np.cov(np.vstack([c[2] for c in comps]))
    return np.array([c[0] for c in comps]), s10 / m + s01 / n


def test_hand_checkable_example():
    # abnormal 0.9, 0.4; normal 0.6, 0.1: 3 of 4 pairs ordered, AUC 0.75. Components V10 = (1, 0.5),
    # V01 = (0.5, 1): S10 = S01 = 0.125, Var = 0.125 / 2 + 0.125 / 2 = 0.125
    aucs, cov = delong([1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1])
    assert aucs[0] == pytest.approx(0.75)
    assert cov[0, 0] == pytest.approx(0.125)
    assert auc_ci([1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1])["se"] == pytest.approx(math.sqrt(0.125))


def test_fast_delong_matches_the_pairwise_definition_with_ties():
    y, a, b = _scores(300, 1)
    a, b = np.round(a, 1), np.round(b, 1)  # many ties: each counts one half
    aucs, cov = delong(y, np.vstack([a, b]))
    ref_aucs, ref_cov = _delong_1988(y, a, b)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-9, atol=1e-14)
    assert aucs[0] == pytest.approx(roc_auc_score(y, a))


def test_delong_variance_and_paired_test_agree_with_a_large_bootstrap():
    """Tolerance: DeLong's standard errors within 10% of those of 4000 study resamples (the bootstrap's own Monte
    Carlo error on an SE is ~1.1% at 4000 draws; DeLong and the bootstrap differ by O(1/n) on 600 studies)."""
    y, a, b = _scores(600, 2)
    rng = np.random.default_rng(0)
    boot_a, boot_d = [], []
    for _ in range(4000):
        i = rng.integers(0, len(y), len(y))
        if len(np.unique(y[i])) < 2:
            continue
        ra, rb = roc_auc_score(y[i], a[i]), roc_auc_score(y[i], b[i])
        boot_a.append(ra)
        boot_d.append(ra - rb)
    ci = auc_ci(y, a)
    test = delong_test(y, a, b)
    assert ci["se"] == pytest.approx(np.std(boot_a), rel=0.10)
    assert test["se"] == pytest.approx(np.std(boot_d), rel=0.10)
    assert test["diff"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    # the paired test is much tighter than treating the AUCs as independent (that is why it is paired)
    assert test["se"] < 0.8 * math.hypot(ci["se"], auc_ci(y, b)["se"])


def test_paired_test_is_calibrated_under_the_null():
    """Two exchangeable scores (same noise level): p < 0.05 in about 5% of 400 datasets (binomial 95% range 3-7%)."""
    rejections = 0
    for seed in range(400):
        y, a, b = _scores(120, 100 + seed, noise2=0.3)
        rejections += delong_test(y, a, b)["p"] < 0.05
    assert 0.025 <= rejections / 400 <= 0.08


def test_intervals_shrink_as_studies_grow():
    widths = []
    for n in (100, 400, 1600):
        y, a, _ = _scores(n, 3)
        row = intervals(y, 1 / (1 + np.exp(-a)), threshold=0.5, n_resamples=500)
        widths.append({k[:-3]: row[k[:-3] + "_hi"] - row[k[:-3] + "_lo"] for k in row if k.endswith("_lo")})
    for metric in widths[0]:
        w = [d[metric] for d in widths]
        assert w[0] > w[1] > w[2] > 0, (metric, w)
        assert w[0] / w[2] == pytest.approx(4, rel=0.45), (metric, w)  # ~ 1 / sqrt(n)


def test_logit_interval_stays_inside_zero_one_and_holds_the_auc():
    y = np.r_[np.ones(30), np.zeros(30)]
    p = np.r_[np.linspace(0.3, 1, 30), np.linspace(0, 0.35, 30)]  # AUC close to 1
    ci = auc_ci(y, p)
    assert 0 < ci["lo"] < ci["auc"] < ci["hi"] < 1
    assert ci["hi"] - ci["auc"] < ci["auc"] - ci["lo"]  # asymmetric towards 1
    perfect = auc_ci([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1])
    assert perfect["auc"] == perfect["lo"] == perfect["hi"] == 1.0
    assert all(math.isnan(v) for v in auc_ci([1, 1, 1], [0.2, 0.3, 0.4]).values())


def test_bootstrap_handles_degenerate_data_with_nan_not_an_error():
    only_normal = bootstrap_metrics([0, 0, 0, 0], [0.1, 0.6, 0.2, 0.3], n_resamples=200)
    assert math.isnan(only_normal["sensitivity_lo"]) and math.isnan(only_normal["kappa_lo"])
    assert 0 <= only_normal["specificity_lo"] <= only_normal["specificity_hi"] <= 1
    assert not math.isnan(only_normal["ece_lo"])
    one_each = bootstrap_metrics([1, 0], [0.9, 0.1], n_resamples=200)  # every resample identical
    assert one_each["sensitivity_lo"] == one_each["sensitivity_hi"] == 1.0


def test_bootstrap_interval_holds_the_point_estimate():
    from sklearn.metrics import cohen_kappa_score

    from zoo.calibration import ece

    y, a, _ = _scores(300, 4)
    p = 1 / (1 + np.exp(-a))
    row = bootstrap_metrics(y, p, threshold=0.5)
    pred = (p >= 0.5).astype(int)
    point = {"kappa": cohen_kappa_score(y, pred), "sensitivity": pred[y == 1].mean(),
             "specificity": 1 - pred[y == 0].mean(), "ece": ece(y, p)}
    for k, v in point.items():
        assert row[f"{k}_lo"] <= v <= row[f"{k}_hi"], k


def test_wilson_interval():
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)  # textbook values
    assert wilson(0, 10)[0] == 0.0 and math.isnan(wilson(0, 0)[0])


def test_a_comparison_in_words():
    text = describe_difference("the ensemble", "resnet10t", {"diff": 0.021, "lo": -0.01, "hi": 0.05, "p": 0.19})
    assert text == ("the ensemble's AUC is 0.021 higher than resnet10t's, 95% CI -0.010 to 0.050, p = 0.19: not a "
                    "significant difference at this sample size")
    text = describe_difference("the ensemble", "resnet10t", {"diff": -0.08, "lo": -0.12, "hi": -0.04, "p": 0.0001})
    assert "0.080 lower" in text and "p < 0.001" in text and "significantly worse" in text


def test_a_class_of_one_study_keeps_the_prevalence_in_every_resample():
    from sklearn.metrics import cohen_kappa_score

    y = np.array([1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.45])  # perfectly separated at 0.5: kappa 1 on every resample
    row = bootstrap_metrics(y, p, n_resamples=200)
    assert cohen_kappa_score(y, (p >= 0.5).astype(int)) == 1.0
    assert row["kappa_lo"] == row["kappa_hi"] == pytest.approx(1.0)
