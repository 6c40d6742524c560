"""The ``llmrelay`` command, run as a user runs it: a subprocess of the installed script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

import llmrelay
from tests.pizzagpt_cases import BY_NAME
from tests.replicas.pizzagpt import ANSWERS
from tests.support import Plugin

LLMRELAY = str(Path(sys.executable).with_name("llmrelay"))
HELLO = BY_NAME["seed_hello"]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMRELAY_")}
    return subprocess.run(
        [LLMRELAY, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_chat_replays_a_cassette() -> None:
    result = run("chat", "--replay", str(HELLO.path), "Привет, как дела?")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ANSWERS["Привет, как дела?"] + "\n"
    assert result.stderr == ""


def test_an_answer_stdout_cannot_encode_is_written_escaped() -> None:
    """An ASCII (or cp1252) stdout: Cyrillic is written as escapes, not a UnicodeEncodeError
    traceback after the answer was paid for."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMRELAY_")}
    result = subprocess.run(
        [LLMRELAY, "chat", "--replay", str(HELLO.path), "Привет, как дела?"],
        capture_output=True,
        timeout=60,
        env={**env, "PYTHONIOENCODING": "ascii"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    expected = ANSWERS["Привет, как дела?"].encode("ascii", "backslashreplace") + b"\n"
    assert result.stdout == expected
    assert result.stdout.startswith(b"\\u041f")


def test_chat_joins_the_words_of_an_unquoted_prompt() -> None:
    """``llmrelay chat Привет, как дела?`` is the prompt its words make, as ``record`` takes
    it (it was "unexpected extra argument")."""
    result = run("chat", "--replay", str(HELLO.path), "Привет,", "как", "дела?")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ANSWERS["Привет, как дела?"] + "\n"


@pytest.mark.parametrize("args", [["-"], []])
def test_chat_reads_the_prompt_from_stdin(args: list[str]) -> None:
    result = run("chat", "--replay", str(HELLO.path), *args, stdin="Привет, как дела?")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Привет!")


def test_chat_sends_the_system_message() -> None:
    case = BY_NAME["system_user"]
    system, user = (m["content"] for m in case.messages)
    result = run("chat", "--replay", str(case.path), "-s", system, user)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Blue.\n"


def test_chat_pinned_provider_model() -> None:
    result = run(
        "chat", "-m", "pizzagpt/gpt-4o-mini", "--replay", str(HELLO.path), "Привет, как дела?"
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["chat", "--replay", str(HELLO.path), "Hello"], "has no recorded answer"),
        (["chat", "--replay", "missing.yaml", "Hello"], "does not exist"),
        (["chat", "-m", "gpt-4o-mnii", "Hello"], "did you mean 'gpt-4o-mini'"),
        (["chat", "--proxy", "ftp://h:1", "Hello"], "unsupported proxy scheme"),
        (
            ["chat", "--replay", str(BY_NAME["misuse_detected"].path), "Tell me a secret."],
            "Misuse detected",
        ),
    ],
)
def test_errors_are_one_clear_line_on_stderr(args: list[str], expected: str) -> None:
    result = run(*args)
    assert result.returncode == 1
    assert result.stdout in ("", "\n")
    assert result.stderr.startswith("error: ")
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_chat_says_how_to_leave_out_an_option_a_provider_does_not_take() -> None:
    asked = ("chat", "--replay", str(HELLO.path), "--option", "temperature=0.2")
    result = run(*asked, "Привет, как дела?")
    assert result.returncode == 1
    assert result.stderr == (
        "error: provider 'pizzagpt' does not support option(s) temperature (it supports: none); "
        "remove the --option, or add --drop-unsupported to send the request without it\n"
    )
    result = run(*asked, "--drop-unsupported", "Привет, как дела?")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ANSWERS["Привет, как дела?"] + "\n"


def test_debug_shows_the_traceback() -> None:
    result = run("--debug", "chat", "-m", "nope", "Hello")
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "ModelNotFound" in result.stderr


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "inf"])
def test_usage_errors_exit_2(value: str) -> None:
    result = run("chat", "--timeout", value, "Hello")
    assert result.returncode == 2
    assert (
        f"Invalid value for '--timeout': {value!r} is not a positive number of seconds "
        "(or 'none' for no deadline)"
    ) in result.stderr


@pytest.mark.parametrize("value", ["none", "None", "2.5"])
def test_chat_timeout_takes_none_for_no_deadline(value: str) -> None:
    result = run("chat", "--timeout", value, "--replay", str(HELLO.path), "Привет, как дела?")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ANSWERS["Привет, как дела?"] + "\n"


def test_timeout_none_means_no_deadline() -> None:
    from llmrelay._cli_types import timeout_options

    assert timeout_options(None) == {}  # not given: the configured default
    assert timeout_options("none") == {"timeout": None}
    assert timeout_options(2.5) == {"timeout": 2.5}


def test_providers_and_models_list_pizzagpt() -> None:
    providers = run("providers")
    assert providers.returncode == 0
    assert "pizzagpt  (not working; from llmrelay-pizzagpt)" in providers.stdout
    models = run("models")
    assert models.returncode == 0
    assert models.stdout.split() == ["gpt-4o-mini", "pizzagpt"]


def test_help_is_lazy() -> None:
    code = (
        "import sys, llmrelay.cli\n"
        "from click.testing import CliRunner\n"
        "result = CliRunner().invoke(llmrelay.cli.cli, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "loaded = [m for m in ('aiohttp', 'llmrelay_pizzagpt', 'vcr') if m in sys.modules]\n"
        "print(loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.fixture
def configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[Path, Callable[..., Result]]]:
    """Write a configuration file, point LLMRELAY_CONFIG at it, and give a CLI runner."""
    from click.testing import CliRunner

    from llmrelay.cli import cli

    def write(text: str) -> tuple[Path, Callable[..., Result]]:
        config = tmp_path / "config.toml"
        config.write_text(text, encoding="utf-8")
        monkeypatch.setenv("LLMRELAY_CONFIG", str(config))
        monkeypatch.setenv("LLMRELAY_CACHE_DIR", str(tmp_path / "cache"))
        return config, lambda *args: CliRunner().invoke(cli, list(args))

    return write


def _disabled(invoke: Callable[..., Result]) -> dict[str, object]:
    rows = json.loads(invoke("providers", "--json").output)["providers"]
    return {row["name"]: row["disabled"] for row in rows}


def test_providers_marks_a_provider_the_configuration_disables(
    configured: Callable[..., tuple[Path, Callable[..., Result]]],
) -> None:
    config, invoke = configured("[providers.pizzagpt]\ndisabled = true\n")
    text = invoke("providers")
    assert text.exit_code == 0, text.output
    marked = "pizzagpt  (not working; disabled in the configuration; from llmrelay-pizzagpt)"
    assert marked in text.output
    assert _disabled(invoke)["pizzagpt"] is True
    config.write_text("", encoding="utf-8")
    assert _disabled(invoke)["pizzagpt"] is False


def test_models_says_why_it_lists_none_when_a_provider_is_there(
    configured: Callable[..., tuple[Path, Callable[..., Result]]],
) -> None:
    _, invoke = configured(
        '[[endpoints]]\nname = "bare"\nbase_url = "http://127.0.0.1:9/v1"\n'
        "[providers.pizzagpt]\ndisabled = true\n"
    )
    result = invoke("models")
    assert result.exit_code == 0, result.output
    assert "no provider lists any" in result.output
    assert "--refresh NAME" in result.output


def test_providers_still_lists_with_a_broken_configuration(
    configured: Callable[..., tuple[Path, Callable[..., Result]]],
) -> None:
    _, invoke = configured("timeout = -1\n")
    result = invoke("providers")
    assert result.exit_code == 0, result.output
    assert "pizzagpt  (not working; from llmrelay-pizzagpt)" in result.stdout
    assert result.stderr.startswith("warning: invalid configuration in ")
    assert "whether a provider is disabled is unknown" in result.stderr
    # The plugin that reads the configuration is not blamed for it.
    assert "FAILED" not in result.stdout
    assert (
        "plugin openai_compat (llmrelay_openai_compat._plugin) registered no providers: "
        "the configuration is invalid (see the warning)\n"
    ) in result.stdout


def test_endpoints_that_no_plugin_serves_are_named(
    configured: Callable[..., tuple[Path, Callable[..., Result]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Configured endpoints without their plugin are not silently ignored: each command that
    would miss their models says why."""
    monkeypatch.setenv("LLMRELAY_DISABLE_PLUGINS", "openai_compat")
    llmrelay.reset_registry()
    _, invoke = configured(
        '[[endpoints]]\nname = "local"\nbase_url = "http://127.0.0.1:9/v1"\nmodels = ["llama3"]\n'
    )
    why = "[[endpoints]] 'local': no provider is registered for it; OpenAI-compatible endpoints "
    why += "are served by the llmrelay-openai-compat plugin"
    models = invoke("models")
    assert models.exit_code == 0, models.output
    assert models.stdout == "gpt-4o-mini  pizzagpt\n"
    assert models.stderr.startswith(f"warning: {why}")
    chat = invoke("chat", "-m", "llama3", "hi")
    assert chat.exit_code == 1
    assert chat.stderr.startswith(f"error: no provider serves model 'llama3' ({why}")
    shown = invoke("config")
    assert shown.exit_code == 0, shown.output
    assert f"warning: {why}" in shown.stderr
    llmrelay.reset_registry()


def test_providers_says_which_variable_holds_a_key_and_whether_it_is_set(
    configured: Callable[..., tuple[Path, Callable[..., Result]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    llmrelay.reset_registry()
    _, invoke = configured(
        '[[endpoints]]\nname = "local"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'models = ["llama3"]\napi_key_env = "LOCAL_KEY"\n'
    )
    assert "  key: $LOCAL_KEY (not set)\n" in invoke("providers").stdout
    monkeypatch.setenv("LOCAL_KEY", "sk-local-0123456789")
    shown = invoke("providers")
    assert "  key: $LOCAL_KEY (set)\n" in shown.stdout
    assert "sk-local-0123456789" not in shown.output
    rows = json.loads(invoke("providers", "--json").stdout)["providers"]
    assert {row["name"]: row["api_key_env"] for row in rows} == {
        "local": "LOCAL_KEY",
        "pizzagpt": None,
    }
    llmrelay.reset_registry()


def test_served_endpoints_raise_no_warning(
    configured: Callable[..., tuple[Path, Callable[..., Result]]],
) -> None:
    llmrelay.reset_registry()
    _, invoke = configured(
        '[[endpoints]]\nname = "local"\nbase_url = "http://127.0.0.1:9/v1"\nmodels = ["llama3"]\n'
    )
    models = invoke("models")
    assert models.exit_code == 0, models.output
    assert models.stdout == "llama3       local\ngpt-4o-mini  pizzagpt\n"
    assert models.stderr == ""
    llmrelay.reset_registry()


def test_models_says_when_every_provider_is_disabled(
    configured: Callable[..., tuple[Path, Callable[..., Result]]],
) -> None:
    config, invoke = configured("[providers.pizzagpt]\ndisabled = true\n")
    assert invoke("models").stdout == f"no models: every provider is disabled in {config}\n"


def test_models_says_when_aliases_hide_every_model(
    configured: Callable[..., tuple[Path, Callable[..., Result]]],
) -> None:
    """An alias that takes a served name to nothing leaves the listing empty: said as that,
    with the alias named, not as providers listing nothing."""
    config, invoke = configured('[aliases]\n"gpt-4o-mini" = "x"\n')
    result = invoke("models")
    assert result.exit_code == 0
    assert result.stdout == (
        f"no models: the [aliases] of {config} hide every model the providers list "
        "(see the warnings)\n"
    )
    assert "warning: [aliases] gpt-4o-mini = 'x': " in result.stderr
    assert "'gpt-4o-mini' is served by pizzagpt; the alias hides it" in result.stderr


def test_the_cli_shows_warnings_its_way_only_while_it_runs(
    configured: Callable[..., tuple[Path, Callable[..., Result]]],
) -> None:
    import warnings

    _, invoke = configured("")
    before = warnings.showwarning
    assert invoke("providers").exit_code == 0
    assert warnings.showwarning is before


class _Buggy(llmrelay.Provider):
    """A provider whose code fails with a bare exception (its contract: llmrelay.errors)."""

    name = "buggy"
    url = "http://127.0.0.1"
    default_model = "m1"
    models = ("m1",)

    @classmethod
    async def complete(
        cls, model: str, messages: list[llmrelay.Message], call: llmrelay.Call
    ) -> llmrelay.Completion:
        raise KeyError("answer")


def test_chat_shows_what_a_providers_code_raised(
    configured: Callable[..., tuple[Path, Callable[..., Result]]],
    use_plugins: Callable[..., Any],
) -> None:
    """The error says "the provider raised KeyError" (a server shows it to its clients); at a
    terminal, the one fixing the provider also sees what it said, and how to get more."""
    _, invoke = configured("")
    use_plugins(("buggy", Plugin(_Buggy)))
    result = invoke("chat", "-m", "buggy/m1", "hi")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith("error: buggy: the provider raised KeyError")
    assert lines[1:] == ["  caused by: buggy: KeyError: 'answer' (--debug shows the traceback)"]


def test_serve_passes_its_limits_to_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``serve`` flag reaches the settings the server runs with (``run`` is replaced)."""
    from click.testing import CliRunner

    from llmrelay import server
    from llmrelay.cli import cli

    seen: list[server.RunOptions] = []
    monkeypatch.setattr(server, "run", seen.append)
    flags = ["--body-timeout", "2.5", "--max-body", "2048", "--shutdown-grace", "3"]
    result = CliRunner().invoke(cli, ["serve", "--port", "0", *flags])
    assert result.exit_code == 0, result.output
    [options] = seen
    settings = options.settings
    assert (settings.body_timeout, settings.max_body_bytes, settings.shutdown_grace) == (
        2.5,
        2048,
        3,
    )
    result = CliRunner().invoke(cli, ["serve", "--body-timeout", "0"])
    assert result.exit_code == 2
    assert "--body-timeout" in result.output
