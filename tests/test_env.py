"""The fast environment reader sees every change os.environ sees."""

from __future__ import annotations

import os

import pytest

from llmrelay._env import getenv


def test_getenv_follows_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    assert getenv("LLMRELAY_TEST_VAR") is None
    monkeypatch.setenv("LLMRELAY_TEST_VAR", "été 日本")
    assert getenv("LLMRELAY_TEST_VAR") == "été 日本" == os.environ["LLMRELAY_TEST_VAR"]
    monkeypatch.setenv("LLMRELAY_TEST_VAR", "")
    assert getenv("LLMRELAY_TEST_VAR") == ""
    monkeypatch.delenv("LLMRELAY_TEST_VAR")
    assert getenv("LLMRELAY_TEST_VAR") is None
    os.environ["LLMRELAY_TEST_VAR"] = "direct"
    try:
        assert getenv("LLMRELAY_TEST_VAR") == "direct"
    finally:
        del os.environ["LLMRELAY_TEST_VAR"]
    assert getenv("LLMRELAY_TEST_VAR") is None
