"""Pydantic models filled with values already checked, as validation would fill them.

Validation is the way to turn outside data into a model, and it stays the only way for
anything unusual. But a few models are built on every request from values whose every check
has just been made in Python (a known role and a ``str``, a non-negative ``int``). For them,
a run of pydantic-core's validator is not faster (about 1 µs either way), but it brings its
code and data into the CPU's caches on every request: with 50 requests in flight, the two
calls it replaces cost about 800 more L1 cache misses per request (cachegrind). These
helpers set exactly the four slots validation sets, and nothing else; each use is pinned to
the validator's result by a test (tests/test_types.py, tests/test_client.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from pydantic import BaseModel

__all__ = ["built", "fill"]

M = TypeVar("M", bound=BaseModel)

_new_instance = object.__new__


def _slot_setter(name: str) -> Callable[[BaseModel, Any], None]:
    """The setter of ``BaseModel``'s slot ``name``; ``object.__setattr__`` for it should a
    pydantic release lay its slots out otherwise."""
    setter = getattr(BaseModel.__dict__.get(name), "__set__", None)
    if setter is None:  # pragma: no cover - another pydantic's layout
        return lambda model, value: object.__setattr__(model, name, value)
    return cast("Callable[[BaseModel, Any], None]", setter)


#: The setters of the four slots every pydantic model has (``BaseModel``'s own descriptors):
#: called directly, each skips the look-up by name ``object.__setattr__`` makes, and its
#: argument tuple: about 15 % of a model's cost (11.2k -> 9.5k instructions, callgrind).
_set_dict = _slot_setter("__dict__")
_set_fields_set = _slot_setter("__pydantic_fields_set__")
_set_extra = _slot_setter("__pydantic_extra__")
_set_private = _slot_setter("__pydantic_private__")


def fill(
    model: M,
    values: dict[str, Any],
    extra: dict[str, Any] | None,
    defaulted: frozenset[str] | None = None,
) -> M:
    """Give ``model`` (allocated, not initialised) ``values`` as its fields, all of them set
    but those named in ``defaulted`` (fields validation would fill with their default).

    ``extra`` is what validation gives a model without extra fields: ``{}`` for one with
    ``extra="allow"``, else None.
    """
    _set_dict(model, values)
    fields_set = set(values)
    if defaulted:
        fields_set -= defaulted
    _set_fields_set(model, fields_set)
    _set_extra(model, extra)
    _set_private(model, None)
    return model


def built(
    cls: type[M],
    values: dict[str, Any],
    extra: dict[str, Any] | None,
    defaulted: frozenset[str] | None = None,
) -> M:
    """A new ``cls`` holding ``values``: see :func:`fill`."""
    return fill(_new_instance(cls), values, extra, defaulted)
