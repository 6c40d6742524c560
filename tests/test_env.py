"""The fast environment reader sees every change os.environ sees."""

from __future__ import annotations

import os

import pytest

from llmrelay._env import EnvWatch, getenv


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


def test_envwatch_values_change_whenever_a_watched_variable_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LLMRELAY_TEST_A", raising=False)
    monkeypatch.delenv("LLMRELAY_TEST_B", raising=False)
    watch = EnvWatch("LLMRELAY_TEST_A", "LLMRELAY_TEST_B")
    unset = watch.values()
    assert len(unset) == 2
    assert unset == watch.values()
    monkeypatch.setenv("LLMRELAY_TEST_A", "1")
    one = watch.values()
    assert one != unset
    monkeypatch.setenv("LLMRELAY_TEST_A", "2")
    assert watch.values() not in (unset, one)
    monkeypatch.setenv("LLMRELAY_TEST_A", "1")
    assert watch.values() == one  # same values, same key: caches keyed on it hit again
    monkeypatch.setenv("LLMRELAY_TEST_B", "")  # set but empty is not unset
    assert watch.values() != one
    monkeypatch.setenv("LLMRELAY_OTHER", "x")  # not watched
    monkeypatch.delenv("LLMRELAY_TEST_B")
    assert watch.values() == one


def test_the_proxy_decision_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmrelay._proxy import proxy_for

    for name in ("LLMRELAY_PROXY", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    url = "http://api.example.test/v1"
    assert proxy_for(url, None) is None
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    assert str(proxy_for(url, None)) == "http://127.0.0.1:3128"
    monkeypatch.setenv("NO_PROXY", "api.example.test")
    assert proxy_for(url, None) is None
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.setenv("LLMRELAY_PROXY", "socks5://127.0.0.1:1080")
    assert str(proxy_for(url, None)) == "socks5://127.0.0.1:1080"
    assert proxy_for(url, "") is None  # an explicit "no proxy" wins over everything
