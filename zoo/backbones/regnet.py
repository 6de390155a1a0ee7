"""RegNet family: the seed's torchvision RegNetX-800MF and timm's RegNetX/Y variants."""

from zoo.registry import register_backbone


@register_backbone(source="torchvision:regnet_x_800mf", cam_layer="trunk_output", native_size=224,
                   first_conv="stem.0", classifier="fc")
def regnet_x_800mf():
    """RegNetX-800MF from torchvision: the class project's original backbone."""


@register_backbone(source="timm:regnetx_002", cam_layer="s4", native_size=224)
def regnetx_002():
    """RegNetX-200MF (timm): the smallest RegNet, for quick runs and tests."""


@register_backbone(source="timm:regnetx_016", cam_layer="s4", native_size=224)
def regnetx_016():
    """RegNetX-1.6GF (timm)."""


@register_backbone(source="timm:regnety_002", cam_layer="s4", native_size=224)
def regnety_002():
    """RegNetY-200MF (timm): squeeze-excitation RegNet, small."""


@register_backbone(source="timm:regnety_008", cam_layer="s4", native_size=224)
def regnety_008():
    """RegNetY-800MF (timm)."""


@register_backbone(source="timm:regnety_016", cam_layer="s4", native_size=224)
def regnety_016():
    """RegNetY-1.6GF (timm)."""


@register_backbone(source="timm:regnety_032", cam_layer="s4", native_size=224)
def regnety_032():
    """RegNetY-3.2GF (timm)."""
