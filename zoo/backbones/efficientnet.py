"""EfficientNet family (timm)."""

from zoo.backbones._common import timm_backbone
from zoo.registry import register_backbone


@register_backbone(source="timm:efficientnet_b0", cam_layer="bn2", native_size=224)
def efficientnet_b0(pretrained=False, weights=None, img_size=None):
    """EfficientNet-B0 (timm)."""
    return timm_backbone("efficientnet_b0", pretrained=pretrained, weights=weights)
