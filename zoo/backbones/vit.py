"""Vision transformers (timm). Built at the configured image size (position embeddings are resampled)."""

from zoo.registry import register_backbone, vit_reshape  # vit_reshape: defined there (reshape="vit" maps to it)


@register_backbone(source="timm:vit_small_patch16_224", cam_layer="blocks.-1.norm1", native_size=224,
                   reshape_transform=vit_reshape, sized=True)
def vit_small_patch16_224():
    """ViT-S/16 (timm); any image size divisible by 16."""
