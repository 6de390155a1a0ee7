"""Loading third-party plugins from entry points, for every plugin kind (backbones, combiners). No PyTorch import."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib.metadata import entry_points


def load_entry_points(group: str, name_of: Callable[[object], str | None], what: str) -> list[str]:
    """Import every entry point of ``group``; ``name_of(obj)`` gives the registered name of a properly decorated
    object (None if it is not one). A plugin that fails to import, or is not decorated, is warned about and skipped;
    returns the names loaded."""
    loaded = []
    for ep in entry_points(group=group):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party plugin must not take the zoo down
            warnings.warn(f"bone-zoo plugin {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=3)
            continue
        name = name_of(obj)
        if name is None:
            warnings.warn(f"bone-zoo plugin {ep.name!r} ({ep.value}) is not decorated with @zoo.{what}; skipped",
                          stacklevel=3)
            continue
        loaded.append(name)
    return loaded
