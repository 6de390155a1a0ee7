"""bone-zoo: a zoo of interchangeable backbones for normal/abnormal musculoskeletal radiographs.

The names below are imported on first use, so ``import zoo.data`` or the ONNX prediction path does not pull in PyTorch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
_LAZY = {"BoneClassifier": "zoo.model", "create_backbone": "zoo.registry", "get_backbone": "zoo.registry",
         "list_backbones": "zoo.registry", "register_backbone": "zoo.registry", "Combiner": "zoo.combiners",
         "create_combiner": "zoo.combiners", "list_combiners": "zoo.combiners", "register_combiner": "zoo.combiners"}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
