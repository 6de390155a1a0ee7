"""Vision transformers (timm). Built at the configured image size (position embeddings are resampled)."""

import torch
from torch import nn

from zoo.registry import register_backbone


def vit_reshape(tokens: torch.Tensor, backbone: nn.Module) -> torch.Tensor:
    """ViT block output ``(B, prefix + gh * gw, C)`` -> ``(B, C, gh, gw)`` for Grad-CAM: the prefix tokens (class,
    registers) dropped, the patch tokens laid out on the backbone's patch grid."""
    gh, gw = backbone.patch_embed.grid_size
    prefix = getattr(backbone, "num_prefix_tokens", 1)
    return tokens[:, prefix:, :].reshape(tokens.size(0), gh, gw, tokens.size(2)).permute(0, 3, 1, 2)


@register_backbone(source="timm:vit_small_patch16_224", cam_layer="blocks.-1.norm1", native_size=224,
                   reshape_transform=vit_reshape, sized=True)
def vit_small_patch16_224():
    """ViT-S/16 (timm); any image size divisible by 16."""
