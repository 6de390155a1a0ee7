"""Combiners as plugins: built-ins registered like third-party ones, found by predict.py, its --help and the demo."""

import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT

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
    r = create_combiner("rank", ms)
    assert r.threshold() == 0.5 and np.allclose(r.combine(scores), [(1 / 3 + 1 / 2) / 2, 1.0, (2 / 3 + 1) / 2])
    with pytest.raises(KeyError, match="Did you mean: mean"):
        create_combiner("meen", ms)


def test_a_duplicate_name_is_an_error_naming_both():
    class Other(Combiner):
        name = "mean"

    with pytest.raises(ValueError, match="registered twice"):
        register_combiner(Other)


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
        combiners._REGISTRY.pop("median", None)
        sys.modules.pop("bone_zoo_median_plugin", None)
