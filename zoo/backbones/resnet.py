"""ResNet family (timm)."""

from zoo.registry import register_backbone


@register_backbone(source="timm:resnet10t", cam_layer="layer4", native_size=176)
def resnet10t():
    """ResNet-10-T (timm): a tiny ResNet, for quick runs and tests."""


@register_backbone(source="timm:resnet18", cam_layer="layer4", native_size=224)
def resnet18():
    """ResNet-18 (timm)."""


@register_backbone(source="timm:resnet50", cam_layer="layer4", native_size=224)
def resnet50():
    """ResNet-50 (timm)."""
