"""A minimal named registry, filled by decorators in the module that defines each entry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from deepscope.errors import UnknownNameError

__all__ = ["DEMOS", "Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered ``{name: entry}`` map; the insertion order is the display order.

    Example:
        >>> METHODS: Registry[type] = Registry("method")
        >>> @METHODS.register("gradcam")
        ... class GradCAM: ...
        >>> METHODS.get("gradcam") is GradCAM
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Return a decorator that stores its argument under ``name``."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        """Look up ``name``; an unknown name raises with the closest valid names."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries) from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


DEMOS: Registry[Callable[..., object]] = Registry("demo")
