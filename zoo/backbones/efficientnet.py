"""EfficientNet family (timm)."""

from zoo.registry import register_backbone


@register_backbone(source="timm:efficientnet_b0", cam_layer="bn2", native_size=224)
def efficientnet_b0():
    """EfficientNet-B0 (timm)."""
