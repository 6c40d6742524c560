"""llmrelay: one async, streaming interface over many LLM chat backends.

Providers are plugins discovered through the ``llmrelay`` entry-point group. Name a model and
llmrelay finds the providers that serve it, tries them in order with retries and fallback, and
streams text chunks that end with a :class:`FinishReason`.

The names below load on first use (PEP 562), so ``import llmrelay`` and ``llmrelay --help``
stay fast and pay for pydantic, tenacity and aiohttp only when a request needs them.
"""

from __future__ import annotations

import importlib
import logging as _logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import errors
    from ._call import Call, RetryPolicy
    from ._cassettes import cassette
    from ._client import AsyncClient, ChatCompletion, ChatCompletionChunk, Client
    from ._config import reload_config
    from ._hooks import ENTRY_POINT_GROUP, hookimpl
    from ._prompt import format_prompt
    from ._provider import ChunkStream, Completion, Provider
    from ._registry import PluginFailure, ProviderInfo, Registry, get_registry, reset_registry
    from ._relay import RelayStream, relay
    from ._transport import HTTPResponse, Timeouts, aclose
    from ._types import (
        Chunk,
        ContentPart,
        FinishReason,
        Message,
        Messages,
        Reasoning,
        Role,
        TextPart,
        Usage,
        validate_messages,
    )
    from .errors import LLMRelayError

__version__ = "0.1.0"

# A library logs; the application decides where that goes (nowhere, unless configured).
_logging.getLogger("llmrelay").addHandler(_logging.NullHandler())

#: Public name -> the private module that defines it.
_EXPORTS = {
    "errors": ".errors",
    "LLMRelayError": ".errors",
    "Call": "._call",
    "RetryPolicy": "._call",
    "cassette": "._cassettes",
    "AsyncClient": "._client",
    "ChatCompletion": "._client",
    "ChatCompletionChunk": "._client",
    "Client": "._client",
    "reload_config": "._config",
    "ENTRY_POINT_GROUP": "._hooks",
    "hookimpl": "._hooks",
    "format_prompt": "._prompt",
    "ChunkStream": "._provider",
    "Completion": "._provider",
    "Provider": "._provider",
    "PluginFailure": "._registry",
    "ProviderInfo": "._registry",
    "Registry": "._registry",
    "get_registry": "._registry",
    "reset_registry": "._registry",
    "RelayStream": "._relay",
    "relay": "._relay",
    "HTTPResponse": "._transport",
    "Timeouts": "._transport",
    "aclose": "._transport",
    "Chunk": "._types",
    "ContentPart": "._types",
    "FinishReason": "._types",
    "Message": "._types",
    "Messages": "._types",
    "Reasoning": "._types",
    "Role": "._types",
    "TextPart": "._types",
    "Usage": "._types",
    "validate_messages": "._types",
}

__all__ = [
    "ENTRY_POINT_GROUP",
    "AsyncClient",
    "Call",
    "ChatCompletion",
    "ChatCompletionChunk",
    "Chunk",
    "ChunkStream",
    "Client",
    "Completion",
    "ContentPart",
    "FinishReason",
    "HTTPResponse",
    "LLMRelayError",
    "Message",
    "Messages",
    "PluginFailure",
    "Provider",
    "ProviderInfo",
    "Reasoning",
    "Registry",
    "RelayStream",
    "RetryPolicy",
    "Role",
    "TextPart",
    "Timeouts",
    "Usage",
    "__version__",
    "aclose",
    "cassette",
    "errors",
    "format_prompt",
    "get_registry",
    "hookimpl",
    "relay",
    "reload_config",
    "reset_registry",
    "validate_messages",
]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'llmrelay' has no attribute {name!r}")
    module = importlib.import_module(module_name, __name__)
    value = module if name == "errors" else getattr(module, name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
