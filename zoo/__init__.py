"""bone-zoo: a zoo of interchangeable backbones for normal/abnormal musculoskeletal radiographs."""

from zoo.model import BoneClassifier
from zoo.registry import create_backbone, get_backbone, list_backbones, register_backbone

__version__ = "0.1.0"
__all__ = ["BoneClassifier", "create_backbone", "get_backbone", "list_backbones", "register_backbone"]
