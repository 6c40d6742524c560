"""Configuration: file + environment, validated, with errors that say where and what."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

import llmrelay._config as llmrelay_config
from llmrelay._config import (
    Config,
    config_path,
    get_config,
    load_config,
    reload_config,
    render_toml,
)
from llmrelay.cli import cli
from llmrelay.errors import ConfigError
from tests.endpoint_support import run_cli

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
        ("[[endpoints]]\nname = 'a'\nbase_url = 'http://'", "endpoints.0.base_url: has no host"),
        (
            "[[endpoints]]\nname = 'a'\nbase_url = 'http://h:99999/v1'",
            "endpoints.0.base_url: is not a valid URL (Port out of range",
        ),
        (
            "[[endpoints]]\nname = 'a'\nbase_url = 'http://h:0/v1'",
            "endpoints.0.base_url: has port 0",
        ),
        (
            "[[endpoints]]\nname = 'a'\nbase_url = 'http://a b/v1'",
            "endpoints.0.base_url: must not contain spaces",
        ),
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


@pytest.mark.parametrize("blank", ["", " ", "\t \n"])
def test_empty_or_blank_environment_values_mean_the_default(
    blank: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("LLMRELAY_TIMEOUT", "LLMRELAY_MAX_RETRIES", "LLMRELAY_MODEL"):
        monkeypatch.setenv(variable, blank)
    config = load_config()
    defaults = Config()
    assert (config.timeout, config.max_retries, config.default_model) == (
        defaults.timeout,
        defaults.max_retries,
        defaults.default_model,
    )
    assert config._environment == ()


def test_timeout_none_in_the_environment_may_carry_spaces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLMRELAY_TIMEOUT", " None ")
    assert load_config().timeout is None


def test_missing_explicit_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRELAY_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config()
    monkeypatch.setenv("LLMRELAY_CONFIG", str(tmp_path))
    with pytest.raises(ConfigError, match="which is not a file"):
        load_config()


def test_an_unreadable_file_is_a_config_error(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file the process may not read (another user's, mode 600): one line that says so, not
    a traceback. (Simulated: the suite may run as root, which reads any file.)"""
    config_file.write_text("timeout = 5")

    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(info.value) == (
        f"cannot read the configuration file {config_file}: Permission denied"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cooldown = -1", "cooldown: Input should be greater than or equal to 0"),
        ("cooldown = 10\nmax_cooldown = 5", "max_cooldown (5) is shorter than cooldown (10)"),
        ("[aliases]\nfast = 'fast'", "aliases: alias 'fast' points at itself"),
        ("source = '/etc/passwd'", "source: unknown key"),
        (
            "[[endpoints]]\nname = 'a'\nbase_url = 'http://h'\nmodels = ['x']\ndefault_model = 'y'",
            "endpoints.0: default_model 'y' is not in models (x)",
        ),
        ("[[endpoints]]\nname = 'a/b'\nbase_url = 'http://h'", "endpoints.0.name"),
        (
            "[[endpoints]]\nname = 'a'\nbase_url = 'http://h'\nmodels = ['x']\n"
            "model_aliases = { fast = 'y' }",
            "endpoints.0: model_aliases point at 'y', not in models (x)",
        ),
        ("[providers.local]\npriority = 'high'", "providers.local.priority"),
        # Empty or blank names: a plugin refusing the endpoint took the others down with it.
        (
            "[[endpoints]]\nname = 'a'\nbase_url = 'http://h'\nmodels = ['', 'm']",
            "endpoints.0.models.0: must not be empty or blank",
        ),
        (
            "[[endpoints]]\nname = 'a'\nbase_url = 'http://h'\napi_key_env = ''",
            "endpoints.0.api_key_env: must not be empty or blank",
        ),
        (
            "[[endpoints]]\nname = 'a'\nbase_url = 'http://h'\ndefault_model = ' '",
            "endpoints.0.default_model: must not be empty or blank",
        ),
        (
            "[[endpoints]]\nname = 'a'\nbase_url = 'http://h'\nmodels = ['m']\n"
            "model_aliases = { '' = 'm' }",
            "endpoints.0.model_aliases.''.[key]: must not be empty or blank",
        ),
        ("[aliases]\nfast = ''", "aliases.fast: must not be empty or blank"),
        ("default_model = ''", "default_model: must not be empty or blank"),
    ],
)
def test_more_errors_name_the_key(config_file: Path, text: str, expected: str) -> None:
    config_file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config()
    assert expected in str(info.value)


_ENDPOINT = "[[endpoints]]\nname = 'a'\nbase_url = 'http://h/v1'\n"


@pytest.mark.parametrize(
    "header",
    [
        "Content-Length",
        "content-length",
        "Transfer-Encoding",
        "Content-Encoding",
    ],
)
def test_framing_headers_are_refused(config_file: Path, header: str) -> None:
    """aiohttp sets these from the body: one in the file would corrupt the request (a
    truncated body) instead of adding to it."""
    config_file.write_text(
        _ENDPOINT + f"headers = {{ X-Team = 'core', {json.dumps(header)} = '3' }}"
    )
    with pytest.raises(ConfigError) as info:
        load_config()
    message = str(info.value)
    assert type(info.value) is ConfigError
    assert message.startswith(f"invalid configuration in {config_file}: endpoints.0.headers: ")
    assert f"header(s) {header} are set by llmrelay from the request" in message


def test_a_host_header_is_allowed(config_file: Path) -> None:
    """A virtual host behind an address or a tunnel: aiohttp sends the Host given."""
    config_file.write_text(
        _ENDPOINT + "headers = { Host = 'api.internal.example', Connection = 'close' }"
    )
    (endpoint,) = load_config().endpoints
    assert endpoint.headers == {"Host": "api.internal.example", "Connection": "close"}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ('{ "Bad Name:" = "v" }', "header name 'Bad Name:' is not a valid HTTP field name"),
        ('{ "X-Team" = "core", "" = "v" }', "header name '' is not a valid HTTP field name"),
        ('{ "X-Ünï" = "v" }', "header name 'X-Ünï' is not a valid HTTP field name"),
        ('{ "X-A\\n" = "v" }', "header name 'X-A\\n' is not a valid HTTP field name"),
        ('{ "X-A" = "hunter22\\r\\nInjected: 1" }', "header X-A has a control character"),
        ('{ "X-A" = "hunter22\\nx" }', "header X-A has a control character"),
        ('{ "X-A" = "hunter22\\u0000" }', "header X-A has a control character"),
        ('{ "X-A" = "hunter22\\u007f" }', "header X-A has a control character"),
        ('{ "X-A" = "hunter22\\u001b[0m" }', "header X-A has a control character"),
    ],
)
def test_header_names_and_values_are_checked(
    config_file: Path, headers: str, expected: str
) -> None:
    config_file.write_text(_ENDPOINT + f"headers = {headers}")
    with pytest.raises(ConfigError) as info:
        load_config()
    message = str(info.value)
    assert type(info.value) is ConfigError
    assert message.startswith(f"invalid configuration in {config_file}: endpoints.0.headers: ")
    assert expected in message
    assert "hunter22" not in message  # a value may be a secret: never in the message


def test_header_values_may_hold_tabs_and_any_token_name(config_file: Path) -> None:
    config_file.write_text(
        _ENDPOINT + 'headers = { "X-a!#$%&\'*+-.^_`|~9" = "a\\tb c", Accept = \'\' }'
    )
    (endpoint,) = load_config().endpoints
    assert endpoint.headers == {"X-a!#$%&'*+-.^_`|~9": "a\tb c", "Accept": ""}


@pytest.mark.parametrize("url", ["http://h/v1#frag", "http://h/v1#", "https://h/v1?v=1#x"])
def test_base_url_with_a_fragment_is_refused(config_file: Path, url: str) -> None:
    config_file.write_text(f"[[endpoints]]\nname = 'a'\nbase_url = {json.dumps(url)}\n")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert type(info.value) is ConfigError
    assert str(info.value) == (
        f"invalid configuration in {config_file}: endpoints.0.base_url: "
        "a base URL has no fragment (remove the #... part)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_retries = true", "max_retries: must be an integer, not true or false (got true)"),
        ("max_retries = false", "max_retries: must be an integer, not true or false (got false)"),
        ("timeout = true", "timeout: must be a number, not true or false (got true)"),
        ("cooldown = false", "cooldown: must be a number, not true or false (got false)"),
        ("max_cooldown = true", "max_cooldown: must be a number, not true or false (got true)"),
        (
            "[providers.local]\npriority = true",
            "providers.local.priority: must be an integer, not true or false (got true)",
        ),
    ],
)
def test_booleans_are_not_numbers(config_file: Path, text: str, expected: str) -> None:
    """TOML's true is not 1: pydantic's lax mode would take it as one (bool is an int)."""
    config_file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config()
    assert type(info.value) is ConfigError
    assert str(info.value) == f"invalid configuration in {config_file}: {expected}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[providers.local]\ndisabled = 1",
            "providers.local.disabled: Input should be a valid boolean",
        ),
        (
            '[providers.local]\ndisabled = "yes"',
            "providers.local.disabled: Input should be a valid boolean",
        ),
        (
            '[[endpoints]]\nname = "e"\nbase_url = "http://127.0.0.1:1/v1"\nworking = "no"',
            "endpoints.0.working: Input should be a valid boolean",
        ),
    ],
)
def test_yes_and_no_are_booleans_only(config_file: Path, text: str, expected: str) -> None:
    """``disabled = "yes"`` (or ``1``) was read as true; ``working = "no"`` as true too."""
    config_file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(info.value).startswith(f"invalid configuration in {config_file}: {expected}")


@pytest.mark.parametrize(
    ("variable", "expected"),
    [
        ("LLMRELAY_MAX_RETRIES", "max_retries: Input should be a valid integer"),
        ("LLMRELAY_TIMEOUT", "timeout: Input should be a valid number"),
    ],
)
def test_booleans_in_the_environment_are_not_numbers(
    variable: str, expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # no file
    monkeypatch.setenv(variable, "true")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert type(info.value) is ConfigError
    assert str(info.value).startswith(f"invalid configuration in environment / {variable}: ")
    assert f"{expected}, unable to parse string as " in str(info.value)
    assert "(got 'true')" in str(info.value)


def test_numbers_from_the_file_and_the_environment_still_work(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file.write_text(
        "max_retries = 0\ntimeout = 1\ncooldown = 0\n[providers.x]\npriority = -1\n"
    )
    config = load_config()
    assert (config.max_retries, config.timeout, config.cooldown) == (0, 1.0, 0.0)
    assert config.priority("x") == -1
    monkeypatch.setenv("LLMRELAY_MAX_RETRIES", "3")
    monkeypatch.setenv("LLMRELAY_TIMEOUT", "2.5")
    assert (load_config().max_retries, load_config().timeout) == (3, 2.5)


def test_source_and_environment_say_where_values_came_from(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file.write_text("cooldown = 1.5\nmax_cooldown = 60\n")
    monkeypatch.setenv("LLMRELAY_MAX_RETRIES", "0")
    config = load_config()
    assert (config.cooldown, config.max_cooldown, config.max_retries) == (1.5, 60, 0)
    assert config.source == str(config_file)
    assert config.environment == ("LLMRELAY_MAX_RETRIES",)
    assert config.masked()["environment"] == ["LLMRELAY_MAX_RETRIES"]


def test_get_config_follows_the_file(config_file: Path) -> None:
    config_file.write_text("max_retries = 1\n")
    assert get_config().max_retries == 1
    config_file.write_text("max_retries = 3  # longer, so the size changes\n")
    assert get_config().max_retries == 3
    replacement = config_file.with_name("new.toml")
    replacement.write_text("max_retries = 4  # longer, so the size changes\n")
    replacement.replace(config_file)  # an editor's atomic save: same size, another file
    assert get_config().max_retries == 4
    config_file.unlink()
    with pytest.raises(ConfigError, match="does not exist"):
        get_config()  # LLMRELAY_CONFIG still names it


def test_get_config_follows_the_environment(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file.write_text("max_retries = 1\n")
    cached = get_config()
    assert get_config() is cached  # nothing changed: the same object, no reload
    monkeypatch.setenv("LLMRELAY_MAX_RETRIES", "5")
    assert get_config().max_retries == 5
    monkeypatch.delenv("LLMRELAY_MAX_RETRIES")
    assert get_config().max_retries == 1
    other = config_file.with_name("other.toml")
    other.write_text("max_retries = 2\n")
    monkeypatch.setenv("LLMRELAY_CONFIG", str(other))
    assert get_config().max_retries == 2


def test_masked_hides_every_secret(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file.write_text(
        GOOD.replace(
            '"X-Team" = "core"',
            '"X-Team" = "core", "X-Custom" = "sk-abcdefghijklmnop", '
            '"X-Auth-Token" = "tok_live_abcdef", "Private-Token" = "glpat-xyzxyz"',
        )
        + '\n[[endpoints]]\nname = "proxied"\nbase_url = "https://bob:hunter22@example.test/v1"\n'
        + '\n[[endpoints]]\nname = "azure"\n'
        + 'base_url = "https://fn.example.test/api?code=AzFuncKey&subscription-key=SubKey"\n'
    )
    monkeypatch.setenv("LOCAL_KEY", "sk-local-123456789")
    data = load_config().masked()
    shown = json.dumps(data)
    for secret in (
        "s3cret",
        "sk-local-123456789",
        "sk-abcdefghijklmnop",
        "hunter22",
        "tok_live_abcdef",
        "glpat-xyzxyz",
        "AzFuncKey",
        "SubKey",
    ):
        assert secret not in shown
    assert [e["api_key"] for e in data["endpoints"]] == ["***", None, None]
    text = render_toml(data)
    headers = tomllib.loads(text)["endpoints"][0]["headers"]
    assert headers["X-Custom"] == "sk-***"
    assert (headers["X-Auth-Token"], headers["Private-Token"], headers["X-Team"]) == (
        "***",
        "***",
        "core",
    )
    assert 'api_key_env = "LOCAL_KEY"  # set (***)' in text
    assert "# default_model: not set" in text


def test_render_toml_reads_back_as_the_same_configuration(config_file: Path) -> None:
    config_file.write_text(GOOD.replace("alice:s3cret@", ""))
    config = load_config()
    again = tomllib.loads(render_toml(config.masked()))
    assert Config.model_validate(again).model_dump() == config.model_dump()


def test_llmrelay_config_prints_it_masked(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file.write_text(GOOD)
    env = {"LLMRELAY_CONFIG": str(config_file), "LOCAL_KEY": "sk-local-123456789"}
    env["LLMRELAY_TIMEOUT"] = "45"
    text = run_cli("config", env=env)
    assert text.returncode == 0, text.stderr
    first, _, body = text.stdout.partition("\n")
    assert first == (
        f"# the effective configuration, from {config_file} and LLMRELAY_TIMEOUT; secrets masked"
    )
    assert tomllib.loads(body)["timeout"] == 45
    assert 'proxy = "socks5://alice:***@127.0.0.1:1080"' in body
    # [aliases] fast -> local/llama3 is served; [providers.pizzagpt] exists; no warnings.
    assert text.stderr == ""
    as_json = CliRunner().invoke(cli, ["config", "--json"], env=env)
    data = json.loads(as_json.stdout)
    assert data["source"] == data["path"] == str(config_file)
    assert data["endpoints"][0]["api_key"] == "***"
    assert data["warnings"] == []
    for output in (text.stdout, as_json.stdout):
        assert "s3cret" not in output
        assert "sk-local" not in output


def test_llmrelay_config_warns_about_names_nothing_matches(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("default_model = 'gpt-4o-mimi'\n[providers.pizzagtp]\npriority = 1\n")
    runner = CliRunner()
    result = runner.invoke(cli, ["config"], env={"LLMRELAY_CONFIG": str(path)})
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [
        "warning: [providers.pizzagtp]: no provider is registered as 'pizzagtp' "
        "(did you mean 'pizzagpt'?)",
        "warning: default_model 'gpt-4o-mimi': no provider serves it",
    ]
    defaults = runner.invoke(cli, ["config"], env={"XDG_CONFIG_HOME": str(tmp_path / "none")})
    assert defaults.stdout.startswith("# the effective configuration, from defaults (no file at ")
    no_deadline = runner.invoke(
        cli, ["config"], env={"XDG_CONFIG_HOME": str(tmp_path / "none"), "LLMRELAY_TIMEOUT": "none"}
    )
    assert "\n# timeout: none (no deadline)\n" in no_deadline.stdout
    missing = runner.invoke(cli, ["config"], env={"LLMRELAY_CONFIG": str(tmp_path / "no.toml")})
    assert missing.exit_code == 1
    assert missing.stderr.startswith("error: LLMRELAY_CONFIG points to ")


def test_llmrelay_config_warns_of_an_alias_that_hides_a_served_model(tmp_path: Path) -> None:
    """Aliases apply before routing, to pinned names too: one named like a served model sent
    its requests elsewhere without a word. Choosing one of a model's providers is fine."""
    path = tmp_path / "config.toml"
    path.write_text(
        "[aliases]\n"
        '"pizzagpt/gpt-4o-mini" = "gpt-4o"\n'  # a pinned name, sent elsewhere
        '"gpt-4o-mini" = "pizzagpt/gpt-4o-mini"\n'  # one of its providers: nothing hidden
    )
    result = CliRunner().invoke(
        cli, ["config"], env={"LLMRELAY_CONFIG": str(path), "LLMRELAY_PLUGINS": "pizzagpt"}
    )
    assert result.exit_code == 0
    warnings = [line for line in result.stderr.splitlines() if "hides" in line]
    assert warnings == [
        "warning: [aliases] pizzagpt/gpt-4o-mini = 'gpt-4o': 'pizzagpt/gpt-4o-mini' is served "
        "by pizzagpt; the alias hides it (requests for 'pizzagpt/gpt-4o-mini' go to 'gpt-4o'): "
        "rename the alias"
    ]


def test_get_config_looks_at_the_file_at_most_once_per_interval(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's stat is taken at most every FILE_CHECK_INTERVAL seconds (the environment on
    every call); reload_config() reads at once."""
    clock = [1000.0]
    monkeypatch.setattr(llmrelay_config.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(llmrelay_config, "FILE_CHECK_INTERVAL", 1.0)
    stats: list[str] = []
    real_stamp = llmrelay_config._stamp
    monkeypatch.setattr(llmrelay_config, "_stamp", lambda p: stats.append(p) or real_stamp(p))
    config_file.write_text("max_retries = 1\n")
    assert get_config().max_retries == 1
    looked = len(stats)
    config_file.write_text("max_retries = 3  # longer, so the size changes\n")
    clock[0] += 0.5
    assert get_config().max_retries == 1  # within the interval: the file is not looked at
    assert len(stats) == looked
    monkeypatch.setenv("LLMRELAY_TIMEOUT", "7")  # the environment is compared on every call
    assert (get_config().timeout, get_config().max_retries) == (7, 3)
    clock[0] += 0.9  # 0.9 s after that reload: still trusted
    config_file.write_text("max_retries = 4  # longer, so the size changes, again\n")
    assert get_config().max_retries == 3
    clock[0] += 0.2  # past the interval: looked at, and re-read
    assert get_config().max_retries == 4
    config_file.write_text("max_retries = 5  # longer, so the size changes, again!\n")
    assert reload_config().max_retries == 5
    assert get_config().max_retries == 5
