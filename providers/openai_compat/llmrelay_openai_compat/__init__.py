"""OpenAI-compatible chat endpoints for llmrelay: one provider per configured endpoint."""

from __future__ import annotations

from ._provider import OpenAICompatible, provider_for

__all__ = ["OpenAICompatible", "provider_for"]
