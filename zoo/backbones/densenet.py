"""DenseNet family (timm); DenseNet-169 is the MURA paper's baseline."""

from zoo.backbones._common import timm_backbone
from zoo.registry import register_backbone


@register_backbone(source="timm:densenet121", cam_layer="features", native_size=224)
def densenet121(pretrained=False, weights=None, img_size=None):
    """DenseNet-121 (timm)."""
    return timm_backbone("densenet121", pretrained=pretrained, weights=weights)


@register_backbone(source="timm:densenet169", cam_layer="features", native_size=224)
def densenet169(pretrained=False, weights=None, img_size=None):
    """DenseNet-169 (timm): the MURA baseline."""
    return timm_backbone("densenet169", pretrained=pretrained, weights=weights)
