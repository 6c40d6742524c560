"""Test a provider plugin offline, the way llmrelay tests its own providers.

Requires pytest. What is here:

- :class:`ProviderConformance`: a base test class that checks a provider keeps llmrelay's
  contract (attributes, the stream's shape, HTTP through the core transport, ``proxy=``, typed
  errors, no secret in a cassette, replay never reaching the network);
- the pytest plugin :mod:`llmrelay.testing.plugin` (pytest loads it by itself): the
  ``llmrelay_cassette`` marker and fixture and the ``--llmrelay-record`` option;
- :func:`serve`, to run a local stand-in of a service on 127.0.0.1 in a test;
- :func:`use_cassette` and :func:`record_mode`, what the marker uses, for code of your own.

The names load on first use (PEP 562): pytest imports the plugin in every run of every
project where llmrelay is installed, and that must cost next to nothing.
See docs/testing.md and the tutorial docs/tutorial-plugin.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._conformance import ErrorCase, ProviderConformance
    from ._replay import RECORD_ENV, RecordMode, record_mode, use_cassette
    from ._servers import free_port, serve

#: Public name -> the private module that defines it.
_EXPORTS = {
    "ErrorCase": "._conformance",
    "ProviderConformance": "._conformance",
    "RECORD_ENV": "._replay",
    "RecordMode": "._replay",
    "record_mode": "._replay",
    "use_cassette": "._replay",
    "free_port": "._servers",
    "serve": "._servers",
}

__all__ = [
    "RECORD_ENV",
    "ErrorCase",
    "ProviderConformance",
    "RecordMode",
    "free_port",
    "record_mode",
    "serve",
    "use_cassette",
]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'llmrelay.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
