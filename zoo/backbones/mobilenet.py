"""MobileNet family (timm): light comparison backbones."""

from zoo.registry import register_backbone


@register_backbone(source="timm:mobilenetv3_small_100", cam_layer="blocks", native_size=224)
def mobilenetv3_small_100():
    """MobileNetV3-Small 1.0 (timm)."""
