import sys
import textwrap

import numpy as np
import pytest

from zoo import registry
from zoo.backbones.vit import vit_reshape
from zoo.plugins import natural_key
from zoo.registry import create_backbone, get_backbone, list_backbones, register_backbone, resolve_backbones

REQUIRED = ["regnet_x_800mf", "regnetx_016", "regnety_008", "regnety_016", "regnety_032", "resnet50", "densenet121",
            "densenet169", "efficientnet_b0", "convnext_tiny", "vit_small_patch16_224"]


def test_required_backbones_are_registered():
    assert set(REQUIRED) <= set(list_backbones())


def test_wildcards_and_natural_sort():
    regnets = list_backbones("regnet*")
    assert regnets == sorted(regnets, key=natural_key)
    assert {"regnetx_002", "regnetx_016", "regnety_032", "regnet_x_800mf"} <= set(regnets)
    assert all(n.startswith("regnet") for n in regnets)
    assert list_backbones(["densenet*", "resnet50"]) == ["densenet121", "densenet169", "resnet50"]
    assert resolve_backbones(["resnet50", "densenet*", "resnet50"]) == ["resnet50", "densenet121", "densenet169"]


def test_unknown_name_lists_closest():
    with pytest.raises(KeyError, match="regnety_016"):
        get_backbone("regnety016")
    with pytest.raises(KeyError, match="no registered backbone matches"):
        resolve_backbones(["nothing*"])


def test_duplicate_registration_names_both_places():
    def resnet50(pretrained=False, weights=None, img_size=None):
        """Impostor."""

    with pytest.raises(ValueError, match=r"registered twice.*zoo\.backbones\.resnet.*test_registry"):
        register_backbone(source="timm:resnet50", cam_layer="layer4")(resnet50)


def test_spec_carries_cam_layer_and_source():
    spec = get_backbone("vit_small_patch16_224")
    assert spec.reshape_transform is vit_reshape
    assert spec.source == "timm:vit_small_patch16_224" and spec.family == "vit"
    assert get_backbone("regnet_x_800mf").source.startswith("torchvision:")


def test_entry_point_plugin_from_an_installed_distribution(tmp_path, monkeypatch):
    """A real distribution on sys.path (dist-info with entry_points.txt), found by importlib.metadata."""
    site = tmp_path / "site"
    (site / "bone_zoo_dummy-0.1.dist-info").mkdir(parents=True)
    (site / "bone_zoo_dummy-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: bone-zoo-dummy\n"
                                                                    "Version: 0.1\n")
    (site / "bone_zoo_dummy-0.1.dist-info" / "entry_points.txt").write_text(
        "[bone_zoo.backbones]\ndummy_net = bone_zoo_dummy_plugin:dummy_net\nbroken = bone_zoo_missing_module:x\n")
    (site / "bone_zoo_dummy_plugin.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn
        from zoo import register_backbone

        class Tiny(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(1, 8, 3, padding=1)
                self.num_features = 8
            def forward(self, x):
                return torch.relu(self.conv(x)).mean((2, 3))

        @register_backbone(source="plugin:tiny", cam_layer="conv")
        def dummy_net(pretrained=False, weights=None, img_size=None):
            """A third-party test backbone."""
            return Tiny()
    '''))
    monkeypatch.syspath_prepend(str(site))
    try:
        with pytest.warns(UserWarning, match="broken"):
            loaded = registry.load_plugins()
        assert loaded == ["dummy_net"]
        assert "dummy_net" in list_backbones("dummy*")
        assert get_backbone("dummy_net").description == "A third-party test backbone."
        import torch

        assert create_backbone("dummy_net")(torch.zeros(2, 1, 16, 16)).shape == (2, 8)
    finally:
        registry.BACKBONES.unregister("dummy_net")
        sys.modules.pop("bone_zoo_dummy_plugin", None)


def test_one_mechanism_for_backbones_and_combiners():
    """Both plugin kinds are the one zoo.plugins.Registry; the combiners' twin registry code is gone."""
    from zoo import combiners
    from zoo.plugins import Registry

    assert isinstance(registry.BACKBONES, Registry) and isinstance(combiners.COMBINERS, Registry)
    assert (registry.BACKBONES.group, combiners.COMBINERS.group) == ("bone_zoo.backbones", "bone_zoo.combiners")
    assert not any(hasattr(combiners, n) for n in ("_REGISTRY", "_state", "_ensure_loaded"))


def test_registry_mechanics_duplicates_suggestions_and_wildcards():
    from zoo.plugins import Registry

    reg = Registry("widget", hint="{n} registered: {names}")

    def net_10():
        """Ten."""

    def net_2():
        """Two."""

    reg.add("net_10", 10, net_10)
    reg.add("net_2", 2, net_2)
    reg.add("net_2", 2, net_2)  # the same definition again (a module imported twice) is no error
    assert reg.names() == ["net_2", "net_10"] and reg.names("*_1?") == ["net_10"] and reg.get("net_2") == 2
    with pytest.raises(KeyError, match=r"unknown widget 'net_20'\. Did you mean: net_2, net_10\? 2 registered: net_2"):
        reg.get("net_20")

    def impostor():
        """Another net_2."""

    with pytest.raises(ValueError, match=r"widget 'net_2' is registered twice: by .*:test_registry_mechanics[^ ]*"
                                         r"net_2 \(.*test_registry\.py:\d+\) and by .*impostor \(.*test_registry\.py"):
        reg.add("net_2", 3, impostor)


def test_duplicate_backbone_names_both_places_with_file_and_line():
    def resnet18():
        """Impostor."""

    with pytest.raises(ValueError, match=r"backbone 'resnet18' is registered twice: by zoo\.backbones\.resnet:resnet18 "
                                         r"\(.*resnet\.py:\d+\) and by .*resnet18 \(.*test_registry\.py:\d+\)"):
        register_backbone(source="timm:resnet18", cam_layer="layer4")(resnet18)
    assert get_backbone("resnet18").origin.startswith("zoo.backbones.resnet:resnet18")  # the original stays


def _fake_entry_points(site, monkeypatch):
    """A plugin module on sys.path and ``zoo.plugins.entry_points`` answering for both groups; returns the groups
    asked, in order."""
    from importlib.metadata import EntryPoint

    (site / "bone_zoo_both_plugin.py").write_text(textwrap.dedent('''
        import numpy as np
        from zoo import register_backbone, register_combiner
        from zoo.combiners import Combiner

        @register_backbone(source="timm:resnet10t", cam_layer="layer4", native_size=176)
        def ep_resnet():
            """An entry-point backbone built from its source."""

        @register_combiner
        class EpMax(Combiner):
            """max of the members' probabilities"""
            name = "ep_max"

            def combine(self, scores):
                return np.nanmax(scores, axis=1)
    '''))
    monkeypatch.syspath_prepend(str(site))
    eps = {"bone_zoo.backbones": [EntryPoint("ep_resnet", "bone_zoo_both_plugin:ep_resnet", "bone_zoo.backbones")],
           "bone_zoo.combiners": [EntryPoint("ep_max", "bone_zoo_both_plugin:EpMax", "bone_zoo.combiners"),
                                  EntryPoint("nope", "bone_zoo_both_plugin:np", "bone_zoo.combiners")]}
    asked: list[str] = []

    def entry_points(group):
        asked.append(group)
        return eps.get(group, [])

    monkeypatch.setattr("zoo.plugins.entry_points", entry_points)
    return asked


def test_entry_points_of_each_group_load_lazily_once_through_the_one_mechanism(tmp_path, monkeypatch):
    from zoo import combiners

    asked = _fake_entry_points(tmp_path, monkeypatch)
    monkeypatch.setattr(registry.BACKBONES, "_plugins_loaded", False)
    monkeypatch.setattr(combiners.COMBINERS, "_plugins_loaded", False)
    try:
        assert asked == []  # nothing is loaded before the registry is asked
        assert "ep_resnet" in list_backbones("ep_*") and list_backbones("ep_*") == ["ep_resnet"]
        assert asked == ["bone_zoo.backbones"]
        with pytest.warns(UserWarning, match=r"'nope'.*not decorated with @zoo\.register_combiner"):
            assert combiners.list_combiners()[-1] == "ep_max"
        combiners.list_combiners()
        assert asked == ["bone_zoo.backbones", "bone_zoo.combiners"]  # once per group
        assert get_backbone("ep_resnet").description == "An entry-point backbone built from its source."
        assert create_backbone("ep_resnet").num_features == create_backbone("resnet10t").num_features
        scores = np.array([[0.2, 0.7]])
        assert combiners.create_combiner("ep_max", [None, None]).combine(scores).tolist() == [0.7]
    finally:
        registry.BACKBONES.unregister("ep_resnet")
        combiners.COMBINERS.unregister("ep_max")
        sys.modules.pop("bone_zoo_both_plugin", None)


def test_listing_shows_each_backbones_native_size():
    line = next(ln for ln in registry.describe_backbones("resnet10t").splitlines())
    assert "timm:resnet10t" in line and "176 px" in line
