"""CAMs for every registered backbone and the fused ensemble heatmap."""

import numpy as np
import pytest
import torch

from zoo.cam import LABELS, compute_cam, fuse_cams, overlay
from zoo.model import BoneClassifier
from zoo.registry import list_backbones


def _image(size=64):
    img = np.zeros((size, size), np.uint8)
    img[size // 4: 3 * size // 4, size // 3: size // 2] = 200
    return img


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_gives_a_cam_of_the_image_size(name):
    torch.manual_seed(0)
    model = BoneClassifier(name, img_size=64, head_hidden=[16])
    cam = compute_cam(model, _image(), "gradcam")
    assert cam.shape == (64, 64) and cam.dtype == np.float32
    assert not np.isnan(cam).any() and cam.min() >= 0 and cam.max() <= 1


@pytest.mark.parametrize("method", list(LABELS))
def test_every_method(method):
    torch.manual_seed(0)
    cam = compute_cam(BoneClassifier("resnet10t", img_size=64, head_hidden=[16]), _image(), method)
    assert cam.shape == (64, 64) and np.isfinite(cam).all() and cam.max() <= 1


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="Grad-CAM"):
        compute_cam(BoneClassifier("resnet10t", img_size=32, head_hidden=[8]), _image(32), "magic")


def test_fused_heatmap_is_the_probability_weighted_mean():
    rng = np.random.default_rng(0)
    a, b = rng.random((32, 32)).astype(np.float32), rng.random((32, 32)).astype(np.float32)
    fused = fuse_cams([a, b], [0.9, 0.3])
    assert np.allclose(fused, (0.9 * a + 0.3 * b) / 1.2, atol=1e-6)
    assert np.allclose(fuse_cams([a, b], [0, 0]), (a + b) / 2, atol=1e-6)
    small = a[::2, ::2]
    assert fuse_cams([small, b], [0.5, 0.5]).shape == (32, 32)  # members of other sizes are resized


def test_overlay_is_rgb_on_the_grayscale_image():
    img = _image()
    cam = np.zeros((64, 64), np.float32)
    cam[:8, :8] = 1
    out = overlay(img, cam)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out[2, 2, 0] > out[2, 2, 2]  # hot corner is red
    assert out[40, 60, 2] > out[40, 60, 0]  # cold area is blue


class _TokenNet(torch.nn.Module):
    """A plugin-style transformer-ish backbone: 8 px patches -> tokens (a summary token first), mean-pooled; its CAM
    layer ``mix`` outputs ``(B, 1 + N, C)`` tokens, which Grad-CAM cannot read without a reshape."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Conv2d(1, 8, 8, stride=8)
        self.mix = torch.nn.Linear(8, 8)
        self.num_features = 8

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = self.mix(torch.cat([t.mean(1, keepdim=True), t], 1))
        return t[:, 1:].mean(1)


def test_a_plugin_backbone_supplies_its_own_cam_reshape():
    """A backbone registered outside the zoo with its own callable reshape gets a CAM of the image size through the
    normal CAM path (no switch on names in cam.py)."""
    from zoo import registry
    from zoo.registry import register_backbone

    calls = []

    def to_grid(tokens, backbone):
        calls.append((tuple(tokens.shape), type(backbone).__name__))
        side = int((tokens.size(1) - 1) ** 0.5)
        return tokens[:, 1:].reshape(tokens.size(0), side, side, tokens.size(2)).permute(0, 3, 1, 2)

    @register_backbone(source="plugin:token_net", cam_layer="mix", reshape_transform=to_grid)
    def test_token_net(pretrained=False, weights=None, img_size=None):
        """A token backbone of a test plugin."""
        return _TokenNet()

    try:
        torch.manual_seed(0)
        model = BoneClassifier("test_token_net", img_size=64, head_hidden=[8])
        cam = compute_cam(model, _image(), "gradcam")
        assert cam.shape == (64, 64) and np.isfinite(cam).all() and 0 <= cam.min() and cam.max() <= 1
        assert cam.max() > 0  # a real map, not the zeros of a failed reshape
        assert calls and calls[0] == ((1, 1 + 8 * 8, 8), "_TokenNet")
    finally:
        registry.BACKBONES.unregister("test_token_net")
