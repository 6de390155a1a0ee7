"""Honest probabilities and triage: temperature scaling, calibration metrics, and conformal triage.

- :class:`Calibrator`: ``p' = sigmoid((logit(p) - bias) / temperature)``, fitted by maximum likelihood (with Platt's
  smoothed targets) on validation (or out-of-fold) study probabilities: temperature scaling (Guo et al. 2017) with a
  bias term, which the weighted BCE needs (its optimum shifts logits by about log(pos_weight), which no temperature
  can undo). Monotone: AUC unchanged.
- :func:`plot_reliability`: reliability diagram. The calibration metrics it shows, :func:`zoo.metrics.ece`,
  :func:`zoo.metrics.brier` and :func:`zoo.metrics.ece_check` (is an ECE evidence of miscalibration, or what a
  calibrated model shows on this few studies?), live with the other metrics and are importable from here too.
- :class:`Triage`: each study becomes ``normal``, ``abnormal`` or ``uncertain``. Its label is the one verdict of
  every path, :func:`zoo.metrics.is_abnormal` at the ensemble's decision threshold (``predict.py --binary``'s); it is
  decided when the confidence in that label (``p`` for abnormal, ``1 - p`` for normal) reaches a threshold chosen on
  calibration studies by Learn-then-Test (Angelopoulos, Bates et al. 2021): every threshold of a fixed grid gets an
  exact binomial test of "error among decided > alpha", errors counted against that label, Bonferroni-corrected.
  With probability at least ``1 - delta`` over the calibration set, the error rate among decided studies of new
  exchangeable data is at most ``alpha`` for the threshold kept.
- :func:`calibration_split`: the studies that make that statement true. Learn-then-Test needs calibration studies
  that played no part in building the score, so ``train_all.py --calibration-fraction`` holds a grouped, stratified
  share of the labelled studies out of training *and* of every selection step (best epoch, member thresholds and
  calibrations, the combiner); each member predicts them once finished (``calibration_predictions.csv``). Without
  them the triage is fitted on the validation studies that chose the model and is marked ``certified=False``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.metrics import brier, ece, ece_check, is_abnormal  # noqa: F401 (brier, ece_check: re-exported here)

EPS = 1e-6
DEFAULT_CALIBRATION_FRACTION = 0.2  # of the labelled studies, when that holds MIN_CALIBRATION_STUDIES
MAX_CALIBRATION_FRACTION = 0.5  # one fold of a 2-fold split: more would leave less to train on than to certify
MIN_CALIBRATION_STUDIES = 150  # below this a certificate at 5% is out of reach (0 errors in 108 decided at best)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def platt_fit(z: np.ndarray, t: np.ndarray, l2: float = 1e-6, iters: int = 100) -> tuple[float, float]:
    """Slope ``a`` and intercept ``c`` maximising ``sum t log s + (1 - t) log(1 - s)``, ``s = sigmoid(a z + c)``,
    less ``l2 a^2 / 2``: the weighted logistic regression scikit-learn's ``LogisticRegression(C=1/l2)`` fits on
    each row twice (label 1 weight t, label 0 weight 1 - t), solved by Newton's method with step halving (two
    parameters, a concave objective). Here rather than scikit-learn's, whose import is ~1 s of every prediction's
    start-up; the two agree to 1e-6 (tests/test_calibration.py)."""
    z, t = np.asarray(z, float), np.asarray(t, float)
    x = np.c_[z, np.ones_like(z)]

    def objective(w):
        m = x @ w
        return float(np.sum(t * m - np.logaddexp(0, m)) - l2 * w[0] ** 2 / 2)

    w = np.zeros(2)
    f = objective(w)
    for _ in range(iters):
        s = 1 / (1 + np.exp(-(x @ w)))
        grad = x.T @ (t - s) - np.array([l2 * w[0], 0.0])
        hess = (x * (s * (1 - s))[:, None]).T @ x + np.diag([l2, 1e-12])
        step = np.linalg.solve(hess, grad)
        for _ in range(50):  # halve until the objective does not fall
            new = w + step
            if (g := objective(new)) >= f - 1e-12:
                break
            step = step / 2
        w, done = new, abs(g - f) <= 1e-12 * max(1.0, abs(f))
        f = g
        if done:
            break
    return float(w[0]), float(w[1])


@dataclass
class Calibrator:
    """``sigmoid((logit(p) - bias) / temperature)``; the identity is ``Calibrator(1.0, 0.0)``."""

    temperature: float = 1.0
    bias: float = 0.0
    n: int = 0  # calibration studies it was fitted on

    @classmethod
    def fit(cls, y: np.ndarray, p: np.ndarray) -> Calibrator:
        """Maximum-likelihood fit on labelled studies (NaN rows ignored); the identity if a class is missing."""
        y, p = np.asarray(y, float), np.asarray(p, float)
        keep = ~np.isnan(y) & ~np.isnan(p)
        y, z = y[keep].astype(int), _logit(p[keep])
        if len(np.unique(y)) < 2:
            return cls(n=int(len(y)))
        # Platt's (1999) targets: (N+ + 1) / (N+ + 2) for abnormal, 1 / (N- + 2) for normal instead of 1 and 0, as
        # each study appearing twice, weighted. On separable validation scores (a few dozen studies, AUC ~1) the
        # plain fit's slope runs off to infinity and turns every score into 0 or 1; this keeps it finite, and on
        # hundreds of studies it changes little (`bench/calibration.py --compare-maps`).
        n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
        t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
        a, c = platt_fit(z, t)  # the Platt form of temperature + bias
        if a <= 1e-3:  # scores carry no ranking signal: keep the identity rather than invert or flatten them
            return cls(n=int(len(y)))
        return cls(temperature=1.0 / a, bias=-c / a, n=int(len(y)))

    def __call__(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=float)
        out = 1.0 / (1.0 + np.exp(-(_logit(p) - self.bias) / self.temperature))
        return np.where(np.isnan(p), np.nan, out)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> Calibrator:
        return cls(**{k: d[k] for k in ("temperature", "bias", "n") if k in d}) if d else cls()


def plot_reliability(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, bins: int = 10,
                     title: str = "Reliability (study level)") -> Path:
    """Reliability diagram: observed abnormal rate against mean predicted probability per bin, ECE in the legend.
    The curve named ``ensemble`` gets consistency bars (Bröcker & Smith 2007): per bin, the 5-95% range of the
    observed rate that a perfectly calibrated model would show on the same studies; a point outside its bar is
    miscalibration, a point inside is within chance at this many studies."""
    from matplotlib.figure import Figure

    from zoo.atomic import save_figure

    fig = Figure(figsize=(5.5, 5), dpi=120)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    for name, (y, p) in curves.items():
        y, p = np.asarray(y, float), np.asarray(p, float)
        keep = ~np.isnan(y) & ~np.isnan(p)
        y, p = y[keep], p[keep]
        if len(y) == 0:
            continue
        idx = np.minimum((p * bins).astype(int), bins - 1)
        used = [b for b in range(bins) if (idx == b).any()]
        xs = np.array([p[idx == b].mean() for b in used])
        ys = [y[idx == b].mean() for b in used]
        bold = name.lower().startswith("ensemble")
        if name == "ensemble":
            draws = np.random.default_rng(0).random((2000, len(p))) < p  # labels of a perfectly calibrated model
            rates = np.stack([draws[:, idx == b].mean(axis=1) for b in used], axis=1)
            lo, hi = np.percentile(rates, [5, 95], axis=0)
            # lo..hi need not straddle the bin's mean (one study at p = 0.97: the 5th percentile is already 1)
            ax.vlines(xs, lo, hi, colors="grey", lw=5, alpha=0.35, label="ensemble: 90% range if calibrated")
        ax.plot(xs, ys, "o:" if name.endswith("_raw") else "o-", lw=2.5 if bold else 1.2,
                color="black" if bold else None, label=f"{name} (ECE {ece(y, p, bins):.3f})")
    ax.set(xlabel="mean predicted P(abnormal)", ylabel="observed abnormal rate", title=title, xlim=(0, 1),
           ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def _binom_cdf(k: int, n: int, q: float) -> float:
    """P(X <= k) for X ~ Binomial(n, q): the p-value of seeing only k errors in n decisions if the error rate were q
    (scipy's, exact and stable for the thousands of studies of MURA's validation split)."""
    from scipy.stats import binom

    return float(binom.cdf(k, n, q))


GRID = tuple(np.round(np.arange(0.5, 0.99, 0.02), 2))  # candidate confidence thresholds, fixed before seeing data


def auto_calibration_fraction(images: pd.DataFrame, requested: float | None) -> float:
    """``requested`` as given (0 disables), or with None the default: ``DEFAULT_CALIBRATION_FRACTION`` of the
    labelled studies when that is at least ``MIN_CALIBRATION_STUDIES`` studies, else 0 (too few to certify a triage,
    and training would lose them for nothing)."""
    if requested is not None:
        _check_fraction(requested)
        return float(requested)
    n = images.loc[images["label"].notna(), "id"].nunique()
    return DEFAULT_CALIBRATION_FRACTION if n * DEFAULT_CALIBRATION_FRACTION >= MIN_CALIBRATION_STUDIES else 0.0


def _check_fraction(fraction: float) -> None:
    if not 0 <= fraction <= MAX_CALIBRATION_FRACTION:
        raise ValueError(f"--calibration-fraction must be in [0, {MAX_CALIBRATION_FRACTION}], not {fraction}: the "
                         "split is one fold of round(1 / F) folds, so more than half cannot be held out (0 = none)")


def calibration_split(images: pd.DataFrame, fraction: float, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every other image, the calibration images): about ``fraction`` of the *labelled* studies held out, grouped by
    patient where the table has a ``patient`` column (a study without one is its own group), else by study, and
    stratified by label (scikit-learn's ``StratifiedGroupKFold``: one fold of ``round(1 / fraction)``, so the share
    held out is about ``1 / round(1 / fraction)``, not ``fraction`` itself: 0.3 holds out about a third; training
    records the actual share). Unlabelled images stay with the rest. ``fraction`` 0: nothing held out; above
    ``MAX_CALIBRATION_FRACTION``: refused."""
    _check_fraction(fraction)
    if fraction == 0:
        return images, images.iloc[:0]
    from sklearn.model_selection import StratifiedGroupKFold

    labelled = images[images["label"].notna()]
    st = labelled.groupby("id", sort=True).agg(label=("label", "first")).reset_index()
    groups = st["id"]
    if "patient" in labelled.columns:
        patient = labelled.groupby("id", sort=True)["patient"].first().reset_index(drop=True)
        groups = patient.where(patient.notna() & (patient.astype(str) != ""), st["id"]).astype(str)
    k = max(2, round(1 / fraction))
    y = st["label"].astype(int)
    if groups.nunique() < k or y.value_counts().min() < 2:
        raise ValueError(f"--calibration-fraction {fraction}: {len(st)} labelled studies ({int(y.sum())} abnormal) "
                         f"in {groups.nunique()} groups are too few to hold out a share of both classes; give "
                         "--calibration-fraction 0")
    _, held = next(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(st["id"], y, groups))
    is_cal = images["id"].isin(set(st["id"].iloc[held])) & images["label"].notna()
    return images[~is_cal].reset_index(drop=True), images[is_cal].reset_index(drop=True)


def calibration_share(images: pd.DataFrame, calibration: pd.DataFrame) -> float:
    """The share of ``images``' labelled studies that ``calibration`` (from :func:`calibration_split`) holds: what
    was actually held out, recorded with the member (the requested fraction is only approximate)."""
    n = images.loc[images["label"].notna(), "id"].nunique()
    return round(calibration["id"].nunique() / n, 4) if n and len(calibration) else 0.0


@dataclass
class Triage:
    """Label a study ``is_abnormal(p, decision_threshold)`` (the ensemble's verdict rule and threshold) and decide it
    when the confidence in that label, ``p`` if abnormal else ``1 - p``, is at least ``threshold`` (> 1: never
    decide). At ``decision_threshold`` 0.5 the confidence is ``max(p, 1 - p)``."""

    alpha: float
    threshold: float
    delta: float = 0.1
    n: int = 0
    # on the calibration studies, at the kept threshold (or, when none passed, the one closest to passing: the
    # smallest p-value): that threshold, how many studies it decided and their error rate
    val_threshold: float = float("nan")
    val_decided: int = 0
    val_error: float = float("nan")
    # True: fitted on calibration studies held out of training and of every selection step, so the guarantee holds;
    # False: fitted on studies that chose the model (validation): the same arithmetic, but no guarantee
    certified: bool = False
    decision_threshold: float = 0.5  # the ensemble's threshold: a study's label is is_abnormal(p, this)
    # fitted on a calibration split but not certified for the scores it is applied to (another backend's than the
    # torch ones it was fitted on, zoo.backends.Choice.uncertified): why, for the warning
    uncertified_because: str = ""

    @classmethod
    def fit(cls, y: np.ndarray, p: np.ndarray, alpha: float, delta: float = 0.1, certified: bool = False,
            decision_threshold: float = 0.5, uncertified_because: str = "") -> Triage:
        """Learn-then-Test on calibration studies: each threshold of a fixed grid is tested for "error among decided
        <= alpha" (exact binomial test of H0: error > alpha, an error being a label ``is_abnormal(p,
        decision_threshold)`` that is not the study's), Bonferroni-corrected at level ``delta``; the lowest threshold
        that passes (most studies decided) is kept. None passes: nothing is decided. Pass the ensemble's decision
        threshold (``Calibrated.threshold``, what ``--binary`` uses) so the triage's labels are its verdicts; it
        must be fixed before these studies are seen (fitted on others, or given).

        The guarantee needs ``y, p`` from studies that played no part in building ``p``; only then say
        ``certified=True`` (the default, False, never claims a guarantee); ``uncertified_because`` says why studies
        that did not build ``p`` still give none (the scores it is applied to are another backend's)."""
        if not 0 < alpha < 1:
            raise ValueError(f"the triage error rate must be in (0, 1), not {alpha}")
        y, p = np.asarray(y, float), np.asarray(p, float)
        keep = ~np.isnan(y) & ~np.isnan(p)
        y, p = y[keep], p[keep]
        label = is_abnormal(p, decision_threshold)
        conf = np.where(label, p, 1 - p)
        wrong = label.astype(float) != y
        threshold, closest = 1.1, (2.0, float("nan"), 0, float("nan"))  # (p-value, threshold, decided, error)
        for lam in sorted(GRID, reverse=True):
            decided = conf >= lam
            n = int(decided.sum())
            if not n:
                continue
            errors = int(wrong[decided].sum())
            pval = _binom_cdf(errors, n, alpha)
            if pval <= delta / len(GRID):
                threshold = float(lam)
            if pval <= closest[0] or threshold == lam:
                closest = (pval, float(lam), n, errors / n)
        return cls(alpha=float(alpha), threshold=threshold, delta=float(delta), n=int(len(y)),
                   val_threshold=closest[1], val_decided=closest[2], val_error=closest[3], certified=bool(certified),
                   decision_threshold=float(decision_threshold), uncertified_because=uncertified_because)

    @property
    def source(self) -> str:
        return "calibration" if self.certified or self.uncertified_because else "validation"

    def warning(self) -> str:
        """One line for output and reports when the triage is not certified; empty when it is."""
        if self.uncertified_because and not self.certified:
            return f"NO GUARANTEE: {self.uncertified_because}"
        return "" if self.certified else (
            f"NO GUARANTEE: the triage threshold was fitted on the {self.n} validation studies that also chose the "
            "model (best epoch, thresholds, calibration, combiner), so 'error among decided <= "
            f"{self.alpha}' is not certified. Train with --calibration-fraction F (studies held out of all of "
            "that) for a certificate")

    def explain(self) -> str:
        """What the calibration studies showed, in words: why this threshold, or why nothing is decided."""
        if self.val_decided == 0:
            return f"no {self.source} study reached a confidence of {GRID[0]:.2f}"
        seen = (f"on the {self.n} {self.source} studies, {self.confidence} >= {self.val_threshold:.2f} decided "
                f"{self.val_decided} with an error rate of {self.val_error:.3f}")
        if self.threshold <= 1:
            return seen
        why = "too few studies" if self.val_error <= self.alpha else "too many errors"
        more = "calibration studies (--calibration-fraction)" if self.certified else "validation studies (--folds)"
        return (f"{seen} (the closest any threshold came): {why} to guarantee <= {self.alpha} with probability "
                f"{1 - self.delta:.2f}. More {more} or a stronger ensemble would decide some")

    @property
    def confidence(self) -> str:
        """The confidence of a study's label, in words (for reports)."""
        return "max(p, 1 - p)" if self.decision_threshold == 0.5 else (
            f"the confidence of its label (p if p >= {self.decision_threshold:.3f}, else 1 - p)")

    def __call__(self, p: np.ndarray, decision_threshold: float | None = None) -> np.ndarray:
        """``normal`` / ``abnormal`` (``is_abnormal(p, decision_threshold)``) where decided, else ``uncertain``.
        ``decision_threshold`` defaults to the one fitted with; another is refused (the certificate is for that
        labelling rule)."""
        if decision_threshold is not None and decision_threshold != self.decision_threshold:
            raise ValueError(f"this triage was fitted for the decision threshold {self.decision_threshold}, not "
                             f"{decision_threshold}: fit it again at that threshold (Ensemble.calibrate(threshold=))")
        p = np.asarray(p, dtype=float)
        label = is_abnormal(p, self.decision_threshold)
        conf = np.where(label, p, 1 - p)
        out = np.where(label, "abnormal", "normal").astype(object)
        out[(conf < self.threshold) | np.isnan(p)] = "uncertain"
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Triage:
        """The inverse of :meth:`to_dict`; a dict written before ``decision_threshold`` existed was fitted at 0.5."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def triage_summary(y: np.ndarray, verdicts: np.ndarray) -> dict[str, float]:
    """Share of studies decided and the error rate among the decided ones (labelled studies only)."""
    y = np.asarray(y, float)
    verdicts = np.asarray(verdicts, dtype=object)
    keep = ~np.isnan(y)
    y, verdicts = y[keep], verdicts[keep]
    decided = verdicts != "uncertain"
    wrong = decided & ((verdicts == "abnormal").astype(float) != y)
    n_dec = int(decided.sum())
    return {"n": int(len(y)), "decided": n_dec, "share_decided": n_dec / len(y) if len(y) else float("nan"),
            "error_among_decided": float(wrong.sum() / n_dec) if n_dec else float("nan")}
