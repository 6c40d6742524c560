"""Read environment variables cheaply: llmrelay consults about a dozen on every request.

``os.environ.get`` encodes the name and decodes the value on each call (about 1 µs). On POSIX,
``os.environ`` keeps its data in a plain ``bytes -> bytes`` dict (``_data``, unchanged since
Python 3.2, and kept in step by ``os.environ[...] = ...``, ``del`` and ``putenv`` through it), so
a look-up there is a dict get. Elsewhere, or if that ever changes, this falls back to
``os.environ.get``.

:class:`EnvWatch` reads a fixed set of variables in one pass and returns their raw values: a
cache key that changes whenever one of them does, so what is derived from the environment
(the configuration, the proxy for a host) is computed once and still follows every change.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

__all__ = ["EnvWatch", "getenv"]

_DATA = getattr(os.environ, "_data", None)
_FAST = os.name == "posix" and isinstance(_DATA, dict)


@functools.lru_cache(maxsize=64)
def _key(name: str) -> bytes:
    return os.fsencode(name)


def getenv(name: str) -> str | None:
    """``os.environ.get(name)``, faster on POSIX."""
    if not _FAST:
        return os.environ.get(name)
    raw = _DATA.get(_key(name))  # type: ignore[union-attr]
    return None if raw is None else os.fsdecode(raw)


class EnvWatch:
    """The raw values of a fixed set of environment variables, read in one pass.

    ``values()`` costs well under a microsecond for a dozen names; compare two results to know
    whether any of the variables changed in between.
    """

    __slots__ = ("_get", "_keys", "names")

    def __init__(self, *names: str) -> None:
        self.names = names
        self._keys: tuple[object, ...]
        self._get: Callable[[object], object]
        if _FAST:
            self._keys = tuple(_key(name) for name in names)
            self._get = _DATA.get  # type: ignore[union-attr]
        else:  # pragma: no cover - not POSIX, or os.environ changed shape
            self._keys = names
            self._get = os.environ.get  # type: ignore[assignment]

    def values(self) -> tuple[object, ...]:
        """The variables' current raw values (``None`` for unset), in ``names`` order."""
        return tuple(map(self._get, self._keys))
