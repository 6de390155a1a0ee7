"""Every registered backbone, through the shared head: 1-channel forward/backward, shapes, no NaN."""

import dataclasses

import pytest
import timm
import torch
from safetensors.torch import save_file

from zoo.backbones._common import PretrainedUnavailable
from zoo.model import BoneClassifier
from zoo.registry import create_backbone, get_backbone, list_backbones


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


@pytest.mark.parametrize("name", ["resnet10t", "vit_small_patch16_224", "regnet_x_800mf"])
def test_a_docstring_only_builder_is_built_from_its_source(name):
    """The decorator's ``source`` is the one statement of where a backbone comes from: the built module is the one
    the source's helper builds (same architecture, same initial weights for the same seed)."""
    from zoo.backbones._common import timm_backbone, torchvision_backbone
    from zoo.registry import get_backbone

    spec = get_backbone(name)
    assert spec.from_source and spec.source.endswith(":" + name)
    torch.manual_seed(0)
    got = create_backbone(name, img_size=96)
    torch.manual_seed(0)
    if spec.scheme == "torchvision":
        want = torchvision_backbone(name, stem="stem.0", head="fc")
    else:
        want = timm_backbone(name, img_size=96, pass_img_size=name.startswith("vit"))
    a, b = got.state_dict(), want.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert got.num_features == want.num_features


def test_a_builder_without_a_body_needs_a_known_source():
    from zoo import registry
    from zoo.registry import register_backbone

    @register_backbone(source="myhub:thing", cam_layer="x")
    def test_bodiless(pretrained=False, weights=None, img_size=None):
        """No body, and a source the zoo has no factory for."""

    try:
        with pytest.raises(KeyError, match=r"unknown backbone source 'myhub'.*Registered: timm, torchvision"):
            create_backbone("test_bodiless")
    finally:
        registry.BACKBONES.unregister("test_bodiless")


def test_pretrained_weights_far_from_their_native_size_warn(tmp_path, recwarn):
    rgb = timm.create_model("resnet10t", pretrained=False)
    file = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(file))
    with pytest.warns(UserWarning, match="trained at 176 px and it is used at 64 px"):
        create_backbone("resnet10t", weights=str(file), img_size=64)
    recwarn.clear()
    create_backbone("resnet10t", weights=str(file), img_size=224)
    create_backbone("resnet10t", img_size=64)  # random init: the size is the user's business
    # the seed recipe's 512 px on 224-px weights is the original method: no warning (up to 4x the native size)
    create_backbone("resnet10t", weights=str(file), img_size=512)
    # nor at a recipe's own size, even outside the band (here 128 px for weights of 400 px)
    dataclasses.replace(get_backbone("resnet10t"), native_size=400).build(weights=str(file), img_size=128)
    assert not [w for w in recwarn if "native" in str(w.message) or "trained at" in str(w.message)]
    with pytest.warns(UserWarning, match="trained at 176 px and it is used at 720 px"):
        create_backbone("resnet10t", weights=str(file), img_size=720)
