"""DenseNet family (timm); DenseNet-169 is the MURA paper's baseline."""

from zoo.registry import register_backbone


@register_backbone(source="timm:densenet121", cam_layer="features", native_size=224)
def densenet121():
    """DenseNet-121 (timm)."""


@register_backbone(source="timm:densenet169", cam_layer="features", native_size=224)
def densenet169():
    """DenseNet-169 (timm): the MURA baseline."""
