"""Every registered backbone, through the shared head: 1-channel forward/backward, shapes, no NaN."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from zoo.backbones._common import PretrainedUnavailable
from zoo.model import BoneClassifier
from zoo.registry import create_backbone, list_backbones


@pytest.mark.parametrize("name", list_backbones())
def test_forward_backward_one_channel(name):
    torch.manual_seed(0)
    model = BoneClassifier(name, img_size=64, head_hidden=[32, 16])
    model.train()
    x = torch.randn(3, 1, 64, 64)
    logits = model(x)
    assert logits.shape == (3,)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1,)


def test_vit_takes_the_configured_size():
    m = create_backbone("vit_small_patch16_224", img_size=96)
    assert m(torch.zeros(1, 1, 96, 96)).shape == (1, 384)
    assert tuple(m.patch_embed.grid_size) == (6, 6)


def test_pretrained_from_local_timm_file_sums_rgb_kernels(tmp_path):
    rgb = timm.create_model("regnetx_002", pretrained=False)
    file = tmp_path / "regnetx_002.safetensors"
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(file))
    gray = create_backbone("regnetx_002", weights=str(file))
    expected = rgb.stem.conv.weight.sum(dim=1, keepdim=True)
    assert torch.allclose(gray.stem.conv.weight, expected, atol=1e-6)
    assert torch.equal(gray.s4.b1.conv1.conv.weight, rgb.s4.b1.conv1.conv.weight)


def test_pretrained_from_local_torchvision_file(tmp_path):
    import torchvision

    rgb = torchvision.models.regnet_x_800mf()
    file = tmp_path / "tv.safetensors"
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(file))
    gray = create_backbone("regnet_x_800mf", weights=str(file))
    assert gray.stem[0].in_channels == 1
    assert torch.allclose(gray.stem[0].weight, rgb.stem[0].weight.sum(1, keepdim=True), atol=1e-6)
    assert gray(torch.zeros(1, 1, 64, 64)).shape == (1, gray.num_features)


def test_pickle_weights_are_refused(tmp_path):
    file = tmp_path / "weights.pth"
    torch.save({}, file)
    with pytest.raises(PretrainedUnavailable, match="only .safetensors"):
        create_backbone("resnet10t", weights=str(file))
