"""How members are combined into one study score: combiners as plugins, like backbones.

A combiner is one decorated class with ``combine()`` (member study scores -> ensemble score) and ``threshold()``
(the ensemble's decision threshold). Built-ins are registered here; other packages add theirs through the
entry-point group ``bone_zoo.combiners``::

    @register_combiner
    class Median(Combiner):
        \"\"\"Median of the members' probabilities.\"\"\"
        name = "median"

        def combine(self, scores):
            return np.nanmedian(scores, axis=1)

``predict.py --ensemble``, its ``--help`` and the demo list whatever is registered.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from zoo.plugins import Registry

ENTRY_POINT_GROUP = "bone_zoo.combiners"
# built-ins first, in registration order (they are registered below, in this module)
COMBINERS: Registry[type[Combiner]] = Registry("ensemble method", ENTRY_POINT_GROUP, hint="Registered: {names}",
                                               natural_sort=False, decorator="@zoo.register_combiner")


class Combiner:
    """Combines members' study probabilities. ``scores`` is ``(n_studies, n_members)``; NaN where a member has no
    readable image of a study (ignored for that study). Subclasses set ``name`` and override what differs.

    A combiner that learns from validation predictions sets ``fitted = True`` and overrides :meth:`fit`; the ensemble
    calls it with the members' validation (out-of-fold, with ``--folds``) study scores before it is used.

    A study is scored on its own: ``combine`` of one row must equal that row of ``combine`` of any batch holding it
    (tests/test_combiners.py checks every registered combiner). Anything a score is relative to (ranks, normalisers)
    is learned in :meth:`fit` from the validation scores, never from the other studies of the call.
    """

    name: ClassVar[str] = ""
    fitted: ClassVar[bool] = False  # fit() learns from validation predictions
    # combine() maps scores through distributions learned by fit(): it cannot combine before fit(), and it must get
    # scores on the scale it was fitted on (the ensemble gives it the members' calibrated scores)
    reference: ClassVar[bool] = False

    def __init__(self, members: Sequence):
        self.members = list(members)  # zoo.ensemble.Group (a member, or a member's k folds): val_auc, threshold

    def fit(self, scores: np.ndarray, labels: np.ndarray) -> Combiner:
        """Learn from validation ``scores`` ``(n_studies, n_members)`` and their 0/1 ``labels``; a no-op here."""
        return self

    @classmethod
    def description(cls) -> str:
        doc = (inspect.getdoc(cls) or "").strip().splitlines()
        return doc[0] if doc else ""

    def weights(self) -> np.ndarray:
        """One weight per member (normalised where used)."""
        return np.ones(len(self.members))

    def combine(self, scores: np.ndarray) -> np.ndarray:
        """Weighted mean over the members that scored each study."""
        return _nan_weighted_mean(np.asarray(scores, dtype=float), self.weights())

    def threshold(self) -> float:
        """Members' stored thresholds combined like their probabilities."""
        t = np.array([m.threshold for m in self.members], dtype=float)
        w = self.weights()
        return float((t * w).sum() / w.sum())


def _nan_weighted_mean(vals: np.ndarray, w: np.ndarray) -> np.ndarray:
    mask = ~np.isnan(vals)
    num = np.nansum(vals * w, axis=1)
    den = (mask * w).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def register_combiner(cls: type[Combiner] | None = None, *, name: str | None = None):
    """Class decorator: register a :class:`Combiner` subclass under ``name`` (default: its ``name`` attribute)."""

    def deco(c: type[Combiner]) -> type[Combiner]:
        if not (isinstance(c, type) and issubclass(c, Combiner)):
            raise TypeError(f"{c!r} must be a subclass of zoo.combiners.Combiner")
        key = name or c.name
        if not key:
            raise ValueError(f"{c.__qualname__} needs a name (class attribute or register_combiner(name=...))")
        COMBINERS.add(key, c, c)
        c.name = key
        return c

    return deco(cls) if cls is not None else deco


def load_plugins() -> list[str]:
    """Import every ``bone_zoo.combiners`` entry point (each must name a registered Combiner subclass)."""
    return COMBINERS.load_plugins()


def list_combiners() -> list[str]:
    """Registered combiner names, built-ins first (in registration order)."""
    return COMBINERS.names()


def describe_combiners() -> str:
    """``name: description`` for every registered combiner, for --help and the demo."""
    return "; ".join(f"{n}: {c.description()}" for n, c in COMBINERS.items())


def create_combiner(name: str, members: Sequence) -> Combiner:
    """A registered combiner for ``members``; an unknown name lists the closest registered ones."""
    return COMBINERS.get(name)(members)


@register_combiner
class Mean(Combiner):
    """mean probability of the members"""

    name = "mean"


@register_combiner
class Weighted(Combiner):
    """mean weighted by each member's validation AUC (0.5 where unknown)"""

    name = "weighted"

    def weights(self) -> np.ndarray:
        auc = np.array([m.val_auc for m in self.members], dtype=float)
        w = np.where(np.isnan(auc), 0.5, auc)
        return w / w.sum()


@register_combiner
class Rank(Combiner):
    """mean of each member's validation percentile (its score through the empirical CDF of its validation scores)"""

    name = "rank"
    fitted = True
    reference = True

    def __init__(self, members: Sequence):
        super().__init__(members)
        self._ref: list[np.ndarray] | None = None  # per member: its sorted validation scores
        self._threshold = 0.5

    def fit(self, scores: np.ndarray, labels: np.ndarray) -> Rank:
        """Each member's validation (out-of-fold) scores become its reference distribution, fixed from here on; the
        threshold is Youden's J of the combined validation percentiles (the scale this combiner outputs)."""
        from zoo.metrics import best_threshold

        x = np.asarray(scores, float)
        self._ref = [np.sort(col[~np.isnan(col)]) for col in x.T]
        self._threshold = best_threshold(np.asarray(labels, float), self.combine(x))
        return self

    def combine(self, scores: np.ndarray) -> np.ndarray:
        """Each study on its own: a member's score -> the share of that member's validation studies scored below it
        (ties count half), in [0, 1]; the mean over the members that scored the study."""
        if self._ref is None:
            raise ValueError("the rank combiner maps each member's score through its validation score distribution: "
                             "fit() it on the members' validation predictions (val_predictions.csv) first")
        vals = np.asarray(scores, dtype=float)
        pct = np.column_stack([_ecdf(ref, vals[:, j]) for j, ref in enumerate(self._ref)])
        return _nan_weighted_mean(pct, self.weights())

    def threshold(self) -> float:
        return self._threshold


def _ecdf(ref: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Mid-point empirical CDF of the sorted ``ref`` at ``x`` (NaN stays NaN, and so does every x without a ref)."""
    if len(ref) == 0:
        return np.full(len(x), np.nan)
    below, upto = np.searchsorted(ref, x, "left"), np.searchsorted(ref, x, "right")
    return np.where(np.isnan(x), np.nan, (below + upto) / (2 * len(ref)))


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U statistic (ties count half), NaN scores dropped: the same number as
    sklearn's roc_auc_score, fast enough for the thousands of calls of a selection."""
    from scipy.stats import rankdata

    keep = ~np.isnan(p)
    y, p = np.asarray(y)[keep] == 1, p[keep]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((rankdata(p)[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@register_combiner
class Select(Combiner):
    """greedy forward selection with replacement on validation AUC (Caruana et al. 2004), bagged over studies"""

    name = "select"
    fitted = True
    bags = 10

    def __init__(self, members: Sequence):
        super().__init__(members)
        self._w = np.ones(len(self.members))

    def weights(self) -> np.ndarray:
        return self._w

    def fit(self, scores: np.ndarray, labels: np.ndarray) -> Select:
        """Each bag: a bootstrap sample of the validation studies; start from its best member, then add (with
        replacement) the member that raises the sample's AUC most, 4 x members times (at most 25), keeping the best
        prefix. The weights are how often each member was picked, summed over bags (Caruana et al.'s bagged
        selection)."""
        x, y = np.asarray(scores, float), np.asarray(labels, float)
        rng = np.random.default_rng(0)
        counts = np.zeros(x.shape[1])
        rounds = min(25, 4 * x.shape[1])
        for _ in range(self.bags):
            idx = rng.integers(0, len(y), len(y))
            if len(np.unique(y[idx])) < 2:
                continue
            counts += _select(x[idx], y[idx], rounds)
        self._w = counts if counts.sum() > 0 else np.ones(x.shape[1])
        return self


def _select(x: np.ndarray, y: np.ndarray, rounds: int) -> np.ndarray:
    """Greedy forward selection with replacement; the pick counts of the best-scoring prefix."""
    counts = np.zeros(x.shape[1])
    total = np.zeros(len(y))
    best_auc, best_counts = -1.0, counts
    for r in range(rounds):
        cand = [_auc(y, np.nan_to_num((total + x[:, j]) / (r + 1), nan=0.5)) for j in range(x.shape[1])]
        j = int(np.nanargmax(cand))
        counts = counts.copy()
        counts[j] += 1
        total = total + np.nan_to_num(x[:, j], nan=0.5)
        if cand[j] > best_auc:
            best_auc, best_counts = cand[j], counts
    return best_counts


@register_combiner
class Auto(Combiner):
    """the combiner with the best cross-validated AUC on the validation predictions (mean without them)"""

    name = "auto"
    fitted = True
    folds = 5

    def __init__(self, members: Sequence):
        super().__init__(members)
        self.chosen: Combiner = Mean(members)
        self.scores: dict[str, float] = {}  # candidate -> cross-validated validation AUC

    def fit(self, scores: np.ndarray, labels: np.ndarray) -> Auto:
        """Every other registered combiner is fitted on 4/5 of the validation studies and scored on the other 1/5,
        five times; the mean held-out AUC decides (to 3 decimals; ties go to the earlier-registered, simpler one).
        The winner is refitted on all of them. Test studies are never seen."""
        x, y = np.asarray(scores, float), np.asarray(labels, int)
        if len(self.members) < 2 or np.bincount(y, minlength=2).min() < self.folds:
            return self  # nothing to choose (and scikit-learn, ~1 s of a one-member prediction's start, not imported)
        from sklearn.model_selection import StratifiedKFold

        splits = list(StratifiedKFold(self.folds, shuffle=True, random_state=0).split(x, y))
        for name, cls in COMBINERS.items():
            if cls is Auto:
                continue
            aucs = []  # per held-out part
            for tr, te in splits:
                c = cls(self.members)
                if c.fitted:
                    c.fit(x[tr], y[tr])
                aucs.append(_auc(y[te], c.combine(x[te])))
            self.scores[name] = float(np.nanmean(aucs))
        best = max(self.scores, key=lambda k: (round(self.scores[k], 3), -list(self.scores).index(k)))
        self.chosen = COMBINERS.get(best)(self.members)
        if self.chosen.fitted:
            self.chosen.fit(x, y)
        return self

    @property
    def reference(self) -> bool:  # as the chosen one
        return self.chosen.reference

    def weights(self) -> np.ndarray:
        return self.chosen.weights()

    def combine(self, scores: np.ndarray) -> np.ndarray:
        return self.chosen.combine(scores)

    def threshold(self) -> float:
        return self.chosen.threshold()
