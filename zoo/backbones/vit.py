"""Vision transformers (timm). Built at the configured image size (position embeddings are resampled)."""

from zoo.backbones._common import timm_backbone
from zoo.registry import register_backbone


@register_backbone(source="timm:vit_small_patch16_224", cam_layer="blocks.-1.norm1", native_size=224, reshape="vit")
def vit_small_patch16_224(pretrained=False, weights=None, img_size=None):
    """ViT-S/16 (timm); any image size divisible by 16."""
    return timm_backbone(
        "vit_small_patch16_224", pretrained=pretrained, weights=weights, img_size=img_size or 224, pass_img_size=True
    )
