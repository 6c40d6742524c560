"""Pizzagpt (pizzagpt.it) for llmrelay: the reference provider."""

from __future__ import annotations

from ._provider import MISUSE_TEXT, Pizzagpt

__all__ = ["MISUSE_TEXT", "Pizzagpt"]
