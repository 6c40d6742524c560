"""Read environment variables cheaply: llmrelay reads about a dozen on every request.

``os.environ.get`` encodes the name and decodes the value on each call (about 1 µs). On POSIX,
``os.environ`` keeps its data in a plain ``bytes -> bytes`` dict (``_data``, unchanged since
Python 3.2, and kept in step by ``os.environ[...] = ...``, ``del`` and ``putenv`` through it), so
a look-up there is a dict get. Elsewhere, or if that ever changes, this falls back to
``os.environ.get``.
"""

from __future__ import annotations

import functools
import os

__all__ = ["getenv"]

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
