"""A plugin whose module cannot be imported (its dependency is missing)."""

from __future__ import annotations

import llmrelay_test_no_such_dependency  # type: ignore[import-not-found]  # noqa: F401
