"""ResNet family (timm)."""

from zoo.backbones._common import timm_backbone
from zoo.registry import register_backbone


@register_backbone(source="timm:resnet10t", cam_layer="layer4", native_size=176)
def resnet10t(pretrained=False, weights=None, img_size=None):
    """ResNet-10-T (timm): a tiny ResNet, for quick runs and tests."""
    return timm_backbone("resnet10t", pretrained=pretrained, weights=weights)


@register_backbone(source="timm:resnet18", cam_layer="layer4", native_size=224)
def resnet18(pretrained=False, weights=None, img_size=None):
    """ResNet-18 (timm)."""
    return timm_backbone("resnet18", pretrained=pretrained, weights=weights)


@register_backbone(source="timm:resnet50", cam_layer="layer4", native_size=224)
def resnet50(pretrained=False, weights=None, img_size=None):
    """ResNet-50 (timm)."""
    return timm_backbone("resnet50", pretrained=pretrained, weights=weights)
