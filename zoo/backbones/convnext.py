"""ConvNeXt family (timm)."""

from zoo.registry import register_backbone


@register_backbone(source="timm:convnext_tiny", cam_layer="stages.3", native_size=224)
def convnext_tiny():
    """ConvNeXt-Tiny (timm)."""
