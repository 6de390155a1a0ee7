"""ConvNeXt family (timm)."""

from zoo.backbones._common import timm_backbone
from zoo.registry import register_backbone


@register_backbone(source="timm:convnext_tiny", cam_layer="stages.3", native_size=224)
def convnext_tiny(pretrained=False, weights=None, img_size=None):
    """ConvNeXt-Tiny (timm)."""
    return timm_backbone("convnext_tiny", pretrained=pretrained, weights=weights)
