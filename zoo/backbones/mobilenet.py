"""MobileNet family (timm): light comparison backbones."""

from zoo.backbones._common import timm_backbone
from zoo.registry import register_backbone


@register_backbone(source="timm:mobilenetv3_small_100", cam_layer="blocks", native_size=224)
def mobilenetv3_small_100(pretrained=False, weights=None, img_size=None):
    """MobileNetV3-Small 1.0 (timm)."""
    return timm_backbone("mobilenetv3_small_100", pretrained=pretrained, weights=weights)
