"""The one registry mechanism for everything pluggable (backbones, backbone sources, combiners). No PyTorch import.

A :class:`Registry` maps names to entries. Built-ins register themselves with a decorator when their module is
imported; third-party packages add theirs through an entry-point group (``bone_zoo.backbones``,
``bone_zoo.combiners``), loaded lazily, once, the first time the registry is asked anything. A name registered from
two places is an error naming both (``module:function (file:line)``); an unknown name lists the closest ones; listings
take fnmatch wildcards and are naturally sorted (``regnetx_002`` before ``regnetx_016``).
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


def natural_key(name: str) -> list:
    """Sort key with the digit runs as numbers: ``regnetx_002 < regnetx_016 < regnetx_120``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def origin(obj: object) -> str:
    """Where ``obj`` (a function or class) is defined: ``module:qualname (file:line)``, for error messages."""
    try:
        where = f"{inspect.getsourcefile(obj)}:{inspect.getsourcelines(obj)[1]}"  # type: ignore[arg-type]
    except (OSError, TypeError):
        where = "unknown file"
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))} ({where})"


@dataclass(frozen=True)
class _Entry(Generic[T]):
    value: T  # what the registry hands out (a BackboneSpec, a Combiner class)
    obj: object  # what was decorated (what an entry point names)

    def same_definition(self, obj: object) -> bool:
        """``obj`` is this entry's definition, or the same one imported again (same module and qualified name)."""
        key = (getattr(obj, "__module__", None), getattr(obj, "__qualname__", None))
        return obj is self.obj or key == (getattr(self.obj, "__module__", 0), getattr(self.obj, "__qualname__", 0))


class Registry(Generic[T]):
    """Names -> entries of one kind.

    ``kind`` names the entries in messages ("backbone"); ``group`` is the entry-point group plugins register through
    (None: none); ``builtins`` a module whose import registers the built-ins (None: they live where the registry does);
    ``hint`` ends the unknown-name error and may use ``{n}`` (how many are registered) and ``{names}``;
    ``natural_sort`` sorts :meth:`names` naturally (else: registration order, built-ins first); ``decorator`` is
    what a plugin decorates its entry with (for the warning about one that did not).
    """

    def __init__(self, kind: str, group: str | None = None, *, builtins: str | None = None, hint: str = "",
                 natural_sort: bool = True, decorator: str = "the zoo's register decorator"):
        self.kind, self.group, self.builtins, self.hint = kind, group, builtins, hint
        self.natural_sort, self.decorator = natural_sort, decorator
        self._entries: dict[str, _Entry[T]] = {}
        self._builtins_loaded = builtins is None
        self._plugins_loaded = group is None

    def add(self, name: str, value: T, obj: object) -> T:
        """Register ``value`` under ``name``; ``obj`` is the decorated function or class. The same definition
        registered again (a module imported twice) replaces itself; another one is an error naming both places."""
        old = self._entries.get(name)
        if old is not None and not old.same_definition(obj):
            raise ValueError(f"{self.kind} {name!r} is registered twice: by {origin(old.obj)} and by {origin(obj)}; "
                             "rename one of them (or uninstall the plugin package that repeats it)")
        self._entries[name] = _Entry(value, obj)
        return value

    def unregister(self, name: str) -> None:
        """Forget ``name`` (tests that register throwaway entries clean up with this)."""
        self._entries.pop(name, None)

    def load(self) -> None:
        """Import the built-ins, then the entry-point plugins: each once, on first use. The flags are set first, so a
        plugin that asks the registry while it is imported does not start the loading again."""
        if not self._builtins_loaded:
            self._builtins_loaded = True
            importlib.import_module(self.builtins)  # type: ignore[arg-type]
        if not self._plugins_loaded:
            self._plugins_loaded = True
            self.load_plugins()

    def load_plugins(self) -> list[str]:
        """Import every entry point of the group; their decorators register them. Returns the names loaded. A plugin
        that fails to import, or names an object that is not registered here, is warned about and skipped."""
        loaded = []
        for ep in entry_points(group=self.group) if self.group else ():
            try:
                obj = ep.load()
            except Exception as exc:  # a broken third-party plugin must not take the zoo down
                warnings.warn(f"bone-zoo plugin {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)
                continue
            name = next((n for n, e in self._entries.items() if e.obj is obj), None)
            if name is None:
                warnings.warn(f"bone-zoo plugin {ep.name!r} ({ep.value}) is not decorated with {self.decorator} "
                              f"(entry-point group {self.group}); skipped", stacklevel=2)
                continue
            loaded.append(name)
        return loaded

    def names(self, pattern: str | list[str] | None = None) -> list[str]:
        """Registered names matching a wildcard pattern (or any of several); all of them without one."""
        self.load()
        names = sorted(self._entries, key=natural_key) if self.natural_sort else list(self._entries)
        if pattern is None:
            return names
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]

    def get(self, name: str) -> T:
        """The entry of ``name``; an unknown name is a KeyError listing the closest registered names."""
        self.load()
        try:
            return self._entries[name].value
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=5, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            tail = self.hint.format(n=len(self._entries), names=", ".join(self.names()))
            raise KeyError(f"unknown {self.kind} {name!r}.{hint}{' ' + tail if tail else ''}") from None

    def items(self) -> Iterator[tuple[str, T]]:
        """``(name, entry)`` in :meth:`names` order."""
        return ((n, self._entries[n].value) for n in self.names())

