import sys
import textwrap

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
    assert spec.reshape_transform is vit_reshape and spec.source == "timm:vit_small_patch16_224" and spec.family == "vit"
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
