"""llmrelay: one async, streaming interface over many LLM chat backends.

Providers are plugins discovered through the ``llmrelay`` entry-point group. Name a model and
llmrelay finds the providers that serve it, tries them in order with retries and fallback, and
streams text chunks that end with a :class:`FinishReason`.
"""

from __future__ import annotations

import logging as _logging

from . import errors
from ._call import Call, RetryPolicy
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
    Role,
    TextPart,
    Usage,
    validate_messages,
)
from .errors import LLMRelayError

__version__ = "0.1.0"

# A library logs; the application decides where that goes (nowhere, unless configured).
_logging.getLogger("llmrelay").addHandler(_logging.NullHandler())

__all__ = [
    "ENTRY_POINT_GROUP",
    "Call",
    "Chunk",
    "ChunkStream",
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
    "Registry",
    "RelayStream",
    "RetryPolicy",
    "Role",
    "TextPart",
    "Timeouts",
    "Usage",
    "__version__",
    "aclose",
    "errors",
    "format_prompt",
    "get_registry",
    "hookimpl",
    "relay",
    "reset_registry",
    "validate_messages",
]
