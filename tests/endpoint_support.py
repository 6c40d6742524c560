"""Helpers for tests of OpenAI-compatible endpoints: a config file, and a registry built from it.

An endpoint exists only through configuration, so a test writes a TOML file, points
``LLMRELAY_CONFIG`` at it and registers the ``openai_compat`` plugin the way its entry point
would: the providers then come from the file, exactly as for a user.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import llmrelay_openai_compat._plugin as openai_plugin
import llmrelay_pizzagpt._plugin as pizzagpt_plugin
from llmrelay import Registry


def endpoint(
    name: str, base_url: str, models: tuple[str, ...] = ("gpt-4o-mini", "llama3"), **extra: str
) -> str:
    """One ``[[endpoints]]`` table."""
    lines = [
        "[[endpoints]]",
        f'name = "{name}"',
        f'base_url = "{base_url}"',
        "models = [" + ", ".join(f'"{m}"' for m in models) + "]",
    ]
    lines += [f'{key} = "{value}"' for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def write_config(path: Path, monkeypatch: pytest.MonkeyPatch, *parts: str) -> Path:
    """Write ``parts`` as the configuration file and make llmrelay read it."""
    path.write_text("\n".join(parts), encoding="utf-8")
    monkeypatch.setenv("LLMRELAY_CONFIG", str(path))
    return path


def install_endpoints(use_plugins: Callable[..., Registry], *, pizzagpt: bool = False) -> Registry:
    """Register the configured endpoints (and Pizzagpt, if asked) as the process's registry."""
    plugins: list[tuple[str, object]] = [("openai_compat", openai_plugin)]
    if pizzagpt:
        plugins.insert(0, ("pizzagpt", pizzagpt_plugin))
    return use_plugins(*plugins)


LLMRELAY = str(Path(sys.executable).with_name("llmrelay"))


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``llmrelay`` script as a user would, with exactly these variables set
    on top of a clean environment (no LLMRELAY_*, no proxy variables)."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LLMRELAY_") and not k.lower().endswith("_proxy")
    }
    return subprocess.run(
        [LLMRELAY, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
        check=False,
    )
