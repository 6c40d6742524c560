"""Configuration: file + environment, validated, with errors that say where and what."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrelay._config import config_path, load_config
from llmrelay.errors import ConfigError

GOOD = """
default_model = "fast"
timeout = 30
max_retries = 1
proxy = "socks5://alice:s3cret@127.0.0.1:1080"

[aliases]
fast = "local/llama3"

[providers.pizzagpt]
priority = -5

[providers.local]
priority = 10

[[endpoints]]
name = "local"
base_url = "http://127.0.0.1:8000/v1/"
api_key_env = "LOCAL_KEY"
models = ["llama3", "qwen"]
headers = { "X-Team" = "core" }
"""


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config.toml"
    monkeypatch.setenv("LLMRELAY_CONFIG", str(path))
    return path


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert config_path() == tmp_path / "llmrelay" / "config.toml"
    config = load_config()
    assert (config.default_model, config.timeout, config.max_retries) == ("gpt-4o-mini", 120, 2)
    assert config.source is None


def test_file_is_read_and_validated(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file.write_text(GOOD)
    monkeypatch.setenv("LOCAL_KEY", "sk-local-123456789")
    config = load_config()
    assert config.default_model == "fast"
    assert config.aliases == {"fast": "local/llama3"}
    assert config.priority("local") == 10
    assert config.priority("pizzagpt") == -5
    assert config.priority("other") == 0
    (endpoint,) = config.endpoints
    assert endpoint.base_url == "http://127.0.0.1:8000/v1"
    assert endpoint.api_key() == "sk-local-123456789"
    shown = str(config.masked())
    assert "s3cret" not in shown
    assert "sk-local" not in shown
    assert "alice:***@" in shown


def test_environment_overrides_the_file(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file.write_text(GOOD)
    monkeypatch.setenv("LLMRELAY_TIMEOUT", "none")
    monkeypatch.setenv("LLMRELAY_MAX_RETRIES", "4")
    monkeypatch.setenv("LLMRELAY_MODEL", "gpt-4o-mini")
    config = load_config()
    assert (config.timeout, config.max_retries, config.default_model) == (None, 4, "gpt-4o-mini")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("timeout = 'soon'", "timeout: Input should be a valid number"),
        ("max_retries = -1", "max_retries: Input should be greater than or equal to 0"),
        ("defualt_model = 'x'", "defualt_model: unknown key"),
        ("proxy = 'ftp://x:1'", "unsupported proxy scheme"),
        ("[[endpoints]]\nname = 'a'\nbase_url = 'localhost:8000'", "endpoints.0.base_url"),
        (
            "[[endpoints]]\nname = 'a'\nbase_url = 'http://h'\n"
            "headers = { Authorization = 'Bearer sk-abcdefghijkl' }",
            "api_key_env instead",
        ),
        (
            "[[endpoints]]\nname='a'\nbase_url='http://h'\n[[endpoints]]\nname='a'\nbase_url='http://i'",
            "endpoint name(s) a used more than once",
        ),
        ("this is = not toml", "not valid TOML"),
    ],
)
def test_errors_name_the_file_key_and_expectation(
    config_file: Path, text: str, expected: str
) -> None:
    config_file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(config_file) in str(info.value)
    assert expected in str(info.value)
    assert "sk-abcdefghijkl" not in str(info.value)


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRELAY_MAX_RETRIES", "many")
    with pytest.raises(ConfigError, match=r"LLMRELAY_MAX_RETRIES.*max_retries"):
        load_config()


def test_missing_explicit_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRELAY_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config()
