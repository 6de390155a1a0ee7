"""Uncertainty of the numbers a report shows: DeLong intervals and paired tests for AUC, study-level bootstrap
intervals for the threshold metrics and ECE, and the sentence a reader acts on.

- :func:`delong`: AUCs of one or more score columns on the same studies and their covariance matrix by the fast
  DeLong algorithm (Sun & Xu 2014, "Fast implementation of DeLong's algorithm for comparing the areas under
  correlated receiver operating characteristic curves", IEEE SPL 21(11)): DeLong et al. (1988)'s structural
  components computed from midranks in O(n log n) per column.
- :func:`auc_ci`: AUC with a 95% interval. The interval is Wald on the **logit** scale,
  ``logit(AUC) +- z * se / (AUC (1 - AUC))`` (delta method), mapped back: it stays inside [0, 1] and is asymmetric
  near 1, where the plain ``AUC +- z se`` overshoots. At AUC 0 or 1 DeLong's variance is 0 and the interval is the
  point (say so rather than invent a width).
- :func:`delong_test`: the paired test of two correlated AUCs on the same studies: difference, plain Wald 95%
  interval of the difference, two-sided p-value.
- :func:`bootstrap_metrics`: kappa, sensitivity, specificity, ECE with percentile intervals from
  ``scipy.stats.bootstrap`` over studies, stratified by label (abnormal and normal studies resampled separately, so
  every resample has both classes and the sensitivity's denominator is fixed, as in the study).
- :func:`describe_difference`: a paired comparison in words; :func:`interval`: an interval as report text.
"""

from __future__ import annotations

import math

import numpy as np

LEVEL = 0.95
N_RESAMPLES = 2000


def _clean(y, scores) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) and scores (k, n) with every row holding a NaN label or score dropped."""
    y = np.asarray(y, float)
    s = np.atleast_2d(np.asarray(scores, float))
    if s.shape[1] != len(y):
        raise ValueError(f"{s.shape[1]} scores for {len(y)} labels")
    keep = ~np.isnan(y) & ~np.isnan(s).any(axis=0)
    return y[keep].astype(int), s[:, keep]


def delong(y, scores) -> tuple[np.ndarray, np.ndarray]:
    """``(aucs (k,), covariance (k, k))`` of the score rows ``scores`` (k, n) (or one (n,) column) on labels ``y``.

    Sun & Xu (2014): with m abnormal and n normal studies, ``T_z`` the midranks of all m + n scores, ``T_x`` those
    of the abnormal among themselves and ``T_y`` of the normal among themselves,
    ``AUC = (sum T_z[abnormal] - m (m + 1) / 2) / (m n)``, the structural components
    ``V10_i = (T_z_i - T_x_i) / n`` (abnormal i) and ``V01_j = 1 - (T_z_j - T_y_j) / m`` (normal j), and
    ``Cov = S10 / m + S01 / n`` with S10, S01 the sample covariances of the components across columns.
    Ties count one half, as in the Mann-Whitney statistic. Raises ValueError without both classes."""
    from scipy.stats import rankdata  # imported where used: predicting without --evaluate never needs scipy.stats

    y, s = _clean(y, scores)
    pos, neg = s[:, y == 1], s[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 abnormal and 2 normal studies; got {m} and {n}")
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


def auc_ci(y, p, level: float = LEVEL) -> dict[str, float]:
    """``{"auc", "se", "lo", "hi"}``: the AUC, its DeLong standard error and a ``level`` interval on the logit scale
    (see the module docstring); all NaN when the AUC is undefined (a class missing or fewer than 2 of one)."""
    nan = float("nan")
    try:
        aucs, cov = delong(y, p)
    except ValueError:
        return {"auc": nan, "se": nan, "lo": nan, "hi": nan}
    auc, se = float(aucs[0]), float(math.sqrt(max(cov[0, 0], 0.0)))
    if se == 0 or auc <= 0 or auc >= 1:
        return {"auc": auc, "se": se, "lo": auc, "hi": auc}
    lg, half = math.log(auc / (1 - auc)), _z(level) * se / (auc * (1 - auc))
    expit = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    return {"auc": auc, "se": se, "lo": expit(lg - half), "hi": expit(lg + half)}


def delong_test(y, p1, p2, level: float = LEVEL) -> dict[str, float]:
    """Paired DeLong test of ``AUC(p1) - AUC(p2)`` on the same studies: ``{"auc1", "auc2", "diff", "se", "lo",
    "hi", "z", "p"}`` (Wald interval of the difference; two-sided p). Identical scores: diff 0, p 1."""
    nan = float("nan")
    try:
        aucs, cov = delong(y, np.vstack([np.asarray(p1, float), np.asarray(p2, float)]))
    except ValueError:
        return dict.fromkeys(("auc1", "auc2", "diff", "se", "lo", "hi", "z", "p"), nan)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    if se < 1e-12:
        z, p = 0.0 if abs(diff) < 1e-12 else math.copysign(math.inf, diff), 1.0 if abs(diff) < 1e-12 else 0.0
    else:
        from scipy.stats import norm

        z = diff / se
        p = float(2 * norm.sf(abs(z)))
    half = _z(level) * se
    return {"auc1": float(aucs[0]), "auc2": float(aucs[1]), "diff": diff, "se": se, "lo": diff - half,
            "hi": diff + half, "z": float(z), "p": p}


# --- study-level bootstrap ------------------------------------------------------------------------------------
# Each statistic takes the resampled abnormal scores and normal scores (..., m) and (..., n), vectorised over the
# leading axis as scipy.stats.bootstrap(vectorized=True) calls it.

def _sensitivity(pos, neg, threshold, axis=-1):
    return np.mean(pos >= threshold, axis=axis)


def _specificity(pos, neg, threshold, axis=-1):
    return np.mean(neg < threshold, axis=axis)


def _kappa(pos, neg, threshold, axis=-1):
    """Cohen's kappa of ``score >= threshold`` against the labels, from the confusion counts (as sklearn's)."""
    m, n = pos.shape[axis], neg.shape[axis]
    tot = m + n
    tp, fp = np.sum(pos >= threshold, axis=axis), np.sum(neg >= threshold, axis=axis)
    po = (tp + n - fp) / tot
    called = (tp + fp) / tot
    pe = called * (m / tot) + (1 - called) * (n / tot)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pe < 1, (po - pe) / (1 - pe), np.nan)


def _ece(pos, neg, threshold=None, axis=-1, bins: int = 10):
    """Equal-width-bin ECE (as :func:`zoo.calibration.ece`): sum over bins of |sum(y) - sum(p)| / n."""
    p = np.concatenate([pos, neg], axis=axis)
    y = np.concatenate([np.ones_like(pos), np.zeros_like(neg)], axis=axis)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        total = total + np.abs(np.sum(y * mask, axis=axis) - np.sum(p * mask, axis=axis))
    return total / p.shape[axis]


STATISTICS = {"kappa": _kappa, "sensitivity": _sensitivity, "specificity": _specificity, "ece": _ece}


def bootstrap_metrics(y, p, threshold: float = 0.5, level: float = LEVEL, n_resamples: int = N_RESAMPLES,
                      seed: int = 0) -> dict[str, float]:
    """``{"<metric>_lo", "<metric>_hi"}`` for kappa, sensitivity, specificity and ECE: percentile intervals of a
    bootstrap over studies (``scipy.stats.bootstrap``), abnormal and normal studies resampled separately.

    Degenerate cases give NaN, not an error: no study of a class (sensitivity or specificity undefined; kappa
    needs both), or resamples whose statistic is undefined (those are dropped before the percentiles are read)."""
    from scipy.stats import bootstrap

    y, s = _clean(y, p)
    s = s[0]
    pos, neg = s[y == 1], s[y == 0]
    out: dict[str, float] = {}
    alpha = (1 - level) / 2
    needs = {"kappa": len(pos) and len(neg), "sensitivity": len(pos), "specificity": len(neg), "ece": len(s)}
    for name, fn in STATISTICS.items():
        lo = hi = float("nan")

        def stat(a, b, axis=-1, fn=fn):
            return fn(a, b, threshold, axis)

        if needs[name] and len(pos) <= 1 and len(neg) <= 1:  # every resample is the data itself
            lo = hi = float(stat(pos[None], neg[None])[0])
        elif needs[name]:
            data, fixed = _fix_small((pos, neg), stat)
            with np.errstate(invalid="ignore"):
                res = bootstrap(data, fixed, n_resamples=n_resamples, vectorized=True, paired=False,
                                method="percentile", random_state=np.random.default_rng(seed))
            dist = np.asarray(res.bootstrap_distribution, float)
            dist = dist[~np.isnan(dist)]
            if len(dist):
                lo, hi = (float(v) for v in np.percentile(dist, [100 * alpha, 100 * (1 - alpha)]))
        out[f"{name}_lo"], out[f"{name}_hi"] = lo, hi
    return out


def _fix_small(data: tuple, stat):
    """A class of zero or one study resamples to itself: keep it fixed and resample the others (scipy wants two or
    more observations per sample). Returns the samples to resample and the statistic over them."""
    moving = [i for i, d in enumerate(data) if len(d) > 1]

    def fixed(*resampled, axis=-1):
        shape = resampled[0].shape[:-1]
        args, it = [], iter(resampled)
        for i, d in enumerate(data):
            args.append(next(it) if i in moving else np.broadcast_to(d, (*shape, len(d))))
        return stat(*args, axis=axis)

    return tuple(data[i] for i in moving), fixed


def intervals(y, p, threshold: float = 0.5, level: float = LEVEL, n_resamples: int = N_RESAMPLES,
              seed: int = 0) -> dict[str, float]:
    """Every interval a metrics row carries: ``auc_lo, auc_hi`` (DeLong, logit) and the bootstrap ones."""
    a = auc_ci(y, p, level)
    return {"auc_lo": a["lo"], "auc_hi": a["hi"], **bootstrap_metrics(y, p, threshold, level, n_resamples, seed)}


def wilson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n (``statsmodels``-free; NaN when n is 0)."""
    if n == 0:
        return float("nan"), float("nan")
    z = _z(level)
    ph = k / n
    centre = (ph + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def interval(lo: float, hi: float) -> str:
    """``"0.712–0.845"``; empty where undefined."""
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)) or math.isnan(float(hi)):
        return ""
    return f"{lo:.3f}–{hi:.3f}"


def describe_difference(name_a: str, name_b: str, test: dict[str, float], alpha: float = 0.05,
                        what: str = "AUC") -> str:
    """One sentence a reader can act on, e.g. "the ensemble's AUC is 0.021 higher than resnet10t's, 95% CI -0.010
    to 0.050, p = 0.19: not a significant difference at this sample size"."""
    d = test["diff"]
    if math.isnan(d):
        return f"{name_a} vs {name_b}: the paired test is undefined here (a class has fewer than 2 studies)"
    word = "higher" if d > 0 else "lower" if d < 0 else "no different"
    amount = f"{abs(d):.3f} {word} than" if d != 0 else "no different from"
    p = test["p"]
    ptxt = "p < 0.001" if p < 0.001 else f"p = {p:.2f}" if p >= 0.01 else f"p = {p:.3f}"
    if p < alpha:
        verdict = f"{name_a} is significantly {'better' if d > 0 else 'worse'} at the {alpha:g} level"
    else:
        verdict = "not a significant difference at this sample size"
    return (f"{_possessive(name_a)} {what} is {amount} {_possessive(name_b)}, {LEVEL:.0%} CI {test['lo']:.3f} to "
            f"{test['hi']:.3f}, {ptxt}: {verdict}")


def _possessive(name: str) -> str:
    return f"{name}'" if name.endswith("s") else f"{name}'s"


def describe_localisation(record: dict | None) -> tuple[str, str]:
    """``(pointing, energy)`` for a table cell: value, interval and chance of
    :func:`zoo.localisation.validation_localisation`'s record; two empty strings without one."""
    if not record:
        return "", ""
    n = record["images"]
    pointing = (f"{_fmt3(record['pointing'])} ({interval(record['pointing_lo'], record['pointing_hi'])}; chance "
                f"{_fmt3(record['pointing_chance'])}; {n} image{'s' if n != 1 else ''})")
    energy = (f"{_fmt3(record['energy'])} ({interval(record['energy_lo'], record['energy_hi'])}; chance "
              f"{_fmt3(record['energy_chance'])})" if math.isfinite(record["energy"]) else
              f"none (no map had mass; chance {_fmt3(record['energy_chance'])})")
    return pointing, energy


def _fmt3(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
