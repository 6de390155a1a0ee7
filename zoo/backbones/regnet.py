"""RegNet family: the seed's torchvision RegNetX-800MF and timm's RegNetX/Y variants."""

from zoo.backbones._common import timm_backbone, torchvision_backbone
from zoo.registry import register_backbone


@register_backbone(source="torchvision:regnet_x_800mf", cam_layer="trunk_output", native_size=224)
def regnet_x_800mf(pretrained=False, weights=None, img_size=None):
    """RegNetX-800MF from torchvision: the class project's original backbone."""
    return torchvision_backbone("regnet_x_800mf", stem="stem.0", head="fc", pretrained=pretrained, weights=weights)


@register_backbone(source="timm:regnetx_002", cam_layer="s4", native_size=224)
def regnetx_002(pretrained=False, weights=None, img_size=None):
    """RegNetX-200MF (timm): the smallest RegNet, for quick runs and tests."""
    return timm_backbone("regnetx_002", pretrained=pretrained, weights=weights)


@register_backbone(source="timm:regnetx_016", cam_layer="s4", native_size=224)
def regnetx_016(pretrained=False, weights=None, img_size=None):
    """RegNetX-1.6GF (timm)."""
    return timm_backbone("regnetx_016", pretrained=pretrained, weights=weights)


@register_backbone(source="timm:regnety_002", cam_layer="s4", native_size=224)
def regnety_002(pretrained=False, weights=None, img_size=None):
    """RegNetY-200MF (timm): squeeze-excitation RegNet, small."""
    return timm_backbone("regnety_002", pretrained=pretrained, weights=weights)


@register_backbone(source="timm:regnety_008", cam_layer="s4", native_size=224)
def regnety_008(pretrained=False, weights=None, img_size=None):
    """RegNetY-800MF (timm)."""
    return timm_backbone("regnety_008", pretrained=pretrained, weights=weights)


@register_backbone(source="timm:regnety_016", cam_layer="s4", native_size=224)
def regnety_016(pretrained=False, weights=None, img_size=None):
    """RegNetY-1.6GF (timm)."""
    return timm_backbone("regnety_016", pretrained=pretrained, weights=weights)


@register_backbone(source="timm:regnety_032", cam_layer="s4", native_size=224)
def regnety_032(pretrained=False, weights=None, img_size=None):
    """RegNetY-3.2GF (timm)."""
    return timm_backbone("regnety_032", pretrained=pretrained, weights=weights)
