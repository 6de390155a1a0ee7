"""Combiners as plugins: built-ins registered like third-party ones, found by predict.py, its --help and the demo."""

import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo import combiners
from zoo.combiners import Combiner, create_combiner, list_combiners, register_combiner


def _members(aucs, thresholds):
    return [SimpleNamespace(val_auc=a, threshold=t) for a, t in zip(aucs, thresholds)]


def test_builtins_are_registered_and_compute_their_formulas():
    assert list_combiners()[:3] == ["mean", "weighted", "rank"]
    scores = np.array([[0.2, 0.4], [0.9, np.nan], [0.5, 0.7]])
    ms = _members([0.9, 0.6], [0.3, 0.5])
    assert np.allclose(create_combiner("mean", ms).combine(scores), [0.3, 0.9, 0.6])
    w = np.array([0.9, 0.6]) / 1.5
    assert np.allclose(create_combiner("weighted", ms).combine(scores), [0.2 * w[0] + 0.4 * w[1], 0.9,
                                                                         0.5 * w[0] + 0.7 * w[1]])
    assert create_combiner("weighted", ms).threshold() == pytest.approx((0.3 * 0.9 + 0.5 * 0.6) / 1.5)
    r = create_combiner("rank", ms).fit(np.array([[0.1, 0.3], [0.5, 0.5], [0.7, 0.9], [0.9, 0.2]]), [0, 0, 1, 1])
    # each member's score -> the share of its validation scores below it (ties half): its validation percentile
    assert np.allclose(r.combine(scores), [(1 / 4 + 1 / 2) / 2, 7 / 8, (3 / 8 + 3 / 4) / 2])
    with pytest.raises(KeyError, match="Did you mean: mean"):
        create_combiner("meen", ms)


def test_a_duplicate_name_is_an_error_naming_both():
    class Other(Combiner):
        name = "mean"

    with pytest.raises(ValueError, match="registered twice"):
        register_combiner(Other)


def test_a_duplicate_combiner_names_both_places_with_file_and_line():
    """As for backbones: module:class (file:line) of the registered one and of the newcomer."""

    class Weighted(Combiner):
        name = "weighted"

    with pytest.raises(ValueError, match=r"'weighted' is registered twice: by zoo\.combiners:Weighted "
                                         r"\(.*combiners\.py:\d+\) and by .*Weighted \(.*test_combiners\.py:\d+\)"):
        register_combiner(Weighted)
    assert create_combiner("weighted", _members([0.9], [0.5])).__class__.__module__ == "zoo.combiners"
    with pytest.raises(KeyError, match=r"unknown ensemble method 'weigthed'\. Did you mean: weighted\? Registered: "
                                       r"mean, weighted, rank"):
        create_combiner("weigthed", [])


def test_entry_point_combiner_reaches_predict_help_ensemble_and_demo(tmp_path, monkeypatch):
    site = tmp_path / "site"
    dist = site / "bone_zoo_median-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bone-zoo-median\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bone_zoo.combiners]\nmedian = bone_zoo_median_plugin:Median\n")
    (site / "bone_zoo_median_plugin.py").write_text(textwrap.dedent('''
        import numpy as np
        from zoo.combiners import Combiner, register_combiner

        @register_combiner
        class Median(Combiner):
            """median of the members' probabilities"""
            name = "median"

            def combine(self, scores):
                return np.nanmedian(scores, axis=1)
    '''))
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--help"], capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": f"{site}:{ROOT}"}, timeout=120)
    assert proc.returncode == 0 and "median: median of the members' probabilities" in " ".join(proc.stdout.split())
    monkeypatch.syspath_prepend(str(site))
    try:
        assert combiners.load_plugins() == ["median"]
        ms = _members([0.7, 0.8, 0.9], [0.5, 0.5, 0.5])
        assert np.allclose(create_combiner("median", ms).combine(np.array([[0.1, 0.5, 0.9]])), [0.5])
        from demo.app import MemberPool, build_demo

        app = build_demo(MemberPool({}), examples=False)
        radios = [b for b in app.blocks.values() if getattr(b, "elem_id", None) == "combiner"]
        assert radios and "median" in [c[1] if isinstance(c, tuple) else c for c in radios[0].choices]
    finally:
        combiners.COMBINERS.unregister("median")
        sys.modules.pop("bone_zoo_median_plugin", None)


def _fitted(name, n_members, rng):
    """A registered combiner for ``n_members`` voters, fitted (when it learns) on random validation scores."""
    c = create_combiner(name, _members(rng.uniform(0.5, 1.0, n_members), rng.uniform(0.2, 0.8, n_members)))
    if c.fitted:
        y = np.r_[0, 1, rng.integers(0, 2, 58)]
        x = np.clip(y[:, None] * rng.uniform(0, 0.4, n_members) + rng.uniform(0, 0.6, (60, n_members)), 0, 1)
        c.fit(x, y)
    return c


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_members=st.integers(1, 4), n_studies=st.integers(1, 12),
       data=st.data())
def test_every_combiner_scores_a_study_on_its_own(seed, n_members, n_studies, data):
    """A study's ensemble score is the same alone as inside any batch of other studies, in any order, for every
    registered combiner (plugins included): nothing it gets may depend on which studies share the call."""
    rng = np.random.default_rng(seed)
    batch = rng.uniform(0, 1, (n_studies, n_members))
    batch[rng.random(batch.shape) < 0.15] = np.nan  # a member without a readable image of a study
    batch[rng.random(batch.shape) < 0.1] = 0.5  # ties with each other
    order = data.draw(st.permutations(range(n_studies)))
    for name in list_combiners():
        c = _fitted(name, n_members, rng)
        together = c.combine(batch)
        alone = np.array([c.combine(batch[i:i + 1])[0] for i in range(n_studies)])
        shuffled = np.empty(n_studies)
        shuffled[list(order)] = c.combine(batch[list(order)])
        assert np.allclose(alone, together, equal_nan=True), name
        assert np.allclose(shuffled, together, equal_nan=True), name


def test_rank_scores_a_single_upload_against_the_validation_distribution():
    """One study alone: a low-scoring one reads low and a high-scoring one reads high on the percentile scale, on
    either side of the rank threshold (the old rank gave both 1.0 against 0.5)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    x = np.clip(y[:, None] * 0.4 + rng.uniform(0, 0.6, (200, 2)), 0, 1)
    r = create_combiner("rank", _members([0.9, 0.9], [0.5, 0.5])).fit(x, y)
    low, high = r.combine(np.array([[0.01, 0.02]]))[0], r.combine(np.array([[0.99, 0.98]]))[0]
    assert low < 0.05 and high > 0.95 and low < r.threshold() < high
    assert 0.2 < r.threshold() < 0.8  # Youden's J on the validation percentiles
    with pytest.raises(ValueError, match="fit"):
        create_combiner("rank", _members([0.9], [0.5])).combine(np.array([[0.3]]))
