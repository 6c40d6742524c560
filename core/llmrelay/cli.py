"""The ``llmrelay`` command line.

Imports are lazy: ``llmrelay --help`` loads neither aiohttp nor any provider, so the command
starts fast and a broken plugin cannot break the help text.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import click

from ._cli_types import (
    reasoning_option,
    request_option,
    request_options,
    timeout_option,
    timeout_options,
    unsupported_here,
)
from .errors import ConfigError, LLMRelayError, UnsupportedOption

__all__ = ["main"]


class _Group(click.Group):
    """Shows llmrelay's errors as one line on stderr (exit 1); ``--debug`` shows the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (LLMRelayError, FileExistsError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            message = str(exc)
            click.echo(f"error: {message}", err=True)
            for line in _bare_causes(exc):
                click.echo(line, err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def _bare_causes(exc: BaseException) -> list[str]:
    """A line per exception a provider's code raised itself behind ``exc``: the message says
    only "the provider raised KeyError" (a server shows it to its clients), and at a terminal
    the one who can fix the provider needs what it said, scrubbed of known secrets."""
    from ._transport import excerpt
    from .errors import AllProvidersFailed, ProviderError

    every = exc if isinstance(exc, AllProvidersFailed) else exc.__cause__  # (after a deadline)
    found = every.errors if isinstance(every, AllProvidersFailed) else [exc]
    lines = []
    for error in found:
        if isinstance(error, ProviderError) and error.bare is not None:
            said = excerpt(str(error.bare))
            lines.append(
                f"  caused by: {error.provider}: {type(error.bare).__name__}"
                f"{': ' + said if said else ''} (--debug shows the traceback)"
            )
    return lines


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@click.version_option(package_name="llmrelay", prog_name="llmrelay")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """One async, streaming interface over many LLM chat backends."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if not debug:  # for this command only: the process may be someone else's (CliRunner)
        ctx.with_resource(warnings.catch_warnings())
        warnings.showwarning = _show_warning
    if debug:
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """A warning as one line on stderr (``warning: ... (RuntimeWarning)``), not Python's two
    with a source line: at a terminal, the message is what matters (``--debug`` keeps the
    usual form)."""
    click.echo(f"warning: {message} ({category.__name__})", err=True)


@cli.command()
@click.argument("words", metavar="[PROMPT]...", nargs=-1)
@click.option(
    "-m",
    "--model",
    default="",
    help="Model name, alias, or provider/model to pin a provider "
    "[default: the configured default_model, gpt-4o-mini unless set].",
)
@click.option("-s", "--system", help="A system message sent before the prompt.")
@click.option(
    "--proxy",
    metavar="URL",
    help="http://, https://, socks4://, socks5:// or socks5h:// proxy (user:pass@ allowed).",
)
@click.option(
    "--replay",
    metavar="CASSETTE",
    type=click.Path(dir_okay=False),
    help="Answer from a recorded cassette instead of the network.",
)
@timeout_option("Total seconds for the call, retries included;")
@request_option()
@click.option(
    "--drop-unsupported",
    is_flag=True,
    help="Send each provider the request without the --option(s) it does not support, "
    "instead of skipping it (or failing when none supports them).",
)
@reasoning_option()
def chat(
    words: tuple[str, ...],
    model: str,
    system: str | None,
    proxy: str | None,
    replay: str | None,
    timeout: float | str | None,
    request_options_given: tuple[tuple[str, Any], ...],
    drop_unsupported: bool,
    show_reasoning: bool,
) -> None:
    """Send PROMPT and stream the answer to stdout (a model's reasoning to stderr).

    Several words are one prompt, joined with spaces (as `llmrelay record` takes them); quote
    it to keep its spacing. PROMPT "-", or no PROMPT with input piped in, reads the prompt
    from stdin.
    """
    prompt = " ".join(words) if words else None
    if prompt is None or prompt == "-":
        if prompt is None and sys.stdin.isatty():
            raise click.UsageError("give a PROMPT, or pipe one on stdin")
        # The newline that ends piped text (echo, heredocs) is not part of the prompt.
        prompt = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    if not prompt.strip():
        raise click.UsageError("the prompt is empty")
    messages: list[dict[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    options = {**request_options(request_options_given), **timeout_options(timeout)}
    if drop_unsupported:
        options["drop_unsupported"] = True

    async def run() -> None:
        from . import _transport
        from ._cli_output import write_answer
        from ._relay import relay

        try:
            try:
                stream = relay(model, messages, proxy=proxy, **options)
            except UnsupportedOption as exc:
                raise unsupported_here(exc, can_drop=True) from None
            whole = options.get("stream") is False
            await write_answer(stream, show_reasoning=show_reasoning, whole=whole)
        finally:
            await _transport.aclose()

    if replay:
        from ._cassettes import cassette

        with cassette(replay):
            asyncio.run(run())
    else:
        asyncio.run(run())


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def providers(as_json: bool) -> None:
    """List every provider, and every plugin that failed to load."""
    from ._config import get_config
    from ._redact import redact
    from ._registry import get_registry

    registry = get_registry()
    disabled: Callable[[str], bool | None]
    config_broken = False
    try:
        disabled = get_config().disabled
    except LLMRelayError as exc:  # still list what is installed: this is where one looks first
        click.echo(f"warning: {exc}; whether a provider is disabled is unknown", err=True)
        disabled = _unknown
        config_broken = True
    rows: list[dict[str, Any]] = [
        {
            "name": info.provider.name,
            "label": info.provider.label or info.provider.name,
            "models": list(info.provider.models),
            "default_model": info.provider.default_model,
            "working": info.provider.working,
            "disabled": disabled(info.provider.name),
            "supports_stream": info.provider.supports_stream,
            "needs_auth": info.provider.needs_auth,
            "api_key_env": info.provider.api_key_env,
            "url": redact(info.provider.url),  # an endpoint's base_url may carry a key
            "plugin": info.plugin,
            "distribution": info.distribution,
        }
        for info in registry.providers.values()
    ]
    failed = [
        {"plugin": f.name, "target": f.target, "distribution": f.distribution, "error": f.error}
        for f in registry.failures
    ]
    if as_json:
        click.echo(json.dumps({"providers": rows, "failed_plugins": failed}, indent=2))
        return
    if not rows:
        click.echo("no providers installed (pip install llmrelay-pizzagpt, for one)")
    for row in rows:
        state = "working" if row["working"] else "not working"
        if row["disabled"]:
            state += "; disabled in the configuration"
        click.echo(
            f"{row['name']}  ({state}; from {row['distribution'] or row['plugin']})\n"
            f"  url: {row['url']}\n  models: {', '.join(row['models']) or '-'}"
        )
        if row["api_key_env"]:  # whether it is set, never its value
            is_set = "set" if os.environ.get(row["api_key_env"]) else "not set"
            click.echo(f"  key: ${row['api_key_env']} ({is_set})")
    for failure in registry.failures:
        if config_broken and isinstance(failure.exception, ConfigError):
            # Not the plugin's fault: it read the configuration the warning names.
            click.echo(
                f"plugin {failure.name} ({failure.target}) registered no providers: "
                "the configuration is invalid (see the warning)"
            )
        else:
            click.echo(f"FAILED plugin {failure.name} ({failure.target}): {failure.error}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--refresh",
    metavar="NAME",
    multiple=True,
    help="First fetch the models of the OpenAI-compatible endpoint NAME (GET {base_url}/models) "
    "and cache them; it serves those when its configuration lists none. Repeatable.",
)
def models(as_json: bool, refresh: tuple[str, ...]) -> None:
    """List every model with the providers that serve it, in the order they are tried."""
    from ._client import list_models

    failed = _refresh_models(refresh) if refresh else 0

    table = {model.id: model.providers for model in list_models()}
    _warn_config_problems()
    if as_json:
        click.echo(json.dumps(table, indent=2))
    else:
        _print_models(table)
    if failed:
        sys.exit(1)  # (after the listing: the other endpoints were refreshed)


def _print_models(table: dict[str, list[str]]) -> None:
    """The model table at a terminal, or why it is empty."""
    if not table:
        from ._config import get_config
        from ._registry import get_registry

        installed = list(get_registry().providers)
        config = get_config()
        if not installed:
            click.echo("no models: no providers installed")
        elif all(config.disabled(name) for name in installed):
            click.echo(
                f"no models: every provider is disabled in {config.source or 'the configuration'}"
            )
        elif any(
            not config.disabled(provider.name)
            for served in get_registry().listing().values()
            for provider, _ in served
        ):
            click.echo(
                "no models: the [aliases] of "
                f"{config.source or 'the configuration'} hide every model the providers list "
                "(see the warnings)"
            )
        else:
            click.echo(
                "no models: no provider lists any (an OpenAI-compatible endpoint without "
                "`models` serves the list `llmrelay models --refresh NAME` fetches)"
            )
    width = max((len(m) for m in table), default=0)
    for model, names in table.items():
        click.echo(f"{model.ljust(width)}  {', '.join(names)}")


def _warn_config_problems() -> None:
    """Say on stderr what in the configuration leaves models out of the listing, or names
    what no provider serves, as ``llmrelay config`` does: endpoints nothing serves, aliases
    that hide a model or point at none, unusable model caches, typos."""
    from ._config import get_config
    from ._registry import get_registry
    from ._routing import config_problems

    for problem in config_problems(get_config(), get_registry()):
        click.echo(f"warning: {problem}", err=True)


def _unknown(name: str) -> None:
    return None


def _refresh_models(names: tuple[str, ...]) -> int:
    """Fetch and cache each endpoint's model list; progress and failures go to stderr.

    Each endpoint on its own: one that fails keeps its previous list and says why, and the
    others are still refreshed (a failure stopped the rest). Returns how many failed.
    """
    from ._config import get_config
    from ._endpoints import fetch_models, save_models
    from ._registry import get_registry, reset_registry
    from ._routing import ENDPOINTS_PLUGIN, unserved_endpoints
    from .errors import ProviderError

    config = get_config()
    endpoints = {endpoint.name: endpoint for endpoint in config.endpoints}
    unserved = unserved_endpoints(config, get_registry())
    for name in names:
        if name not in endpoints:
            raise click.BadParameter(
                f"no [[endpoints]] entry is named {name!r} in "
                f"{config.source or 'the configuration'} "
                f"(configured: {', '.join(endpoints) or 'none'})",
                param_hint="--refresh",
            )

    async def refresh_all() -> int:
        from . import _transport

        failed = 0
        try:
            for name in dict.fromkeys(names):
                endpoint = endpoints[name]
                try:
                    found = await fetch_models(endpoint)
                    path = save_models(endpoint, found)
                except LLMRelayError as exc:
                    failed += 1
                    kept = " (its previous list is kept)" if isinstance(exc, ProviderError) else ""
                    click.echo(f"error: {exc}{kept}", err=True)
                    continue
                note = (
                    "; the configuration lists models for it, and those are served"
                    if endpoint.models
                    else ""
                )
                if name in unserved:
                    note = f"; but no provider serves it (is {ENDPOINTS_PLUGIN} installed?)"
                click.echo(f"{name}: {len(found)} model(s) cached in {path}{note}", err=True)
        finally:
            await _transport.aclose()
        return failed

    failed = asyncio.run(refresh_all())
    reset_registry()  # the endpoints' providers are registered again, with the new lists
    return failed


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML.")
def show_config(as_json: bool) -> None:
    """Print the effective configuration (file, then environment), secrets masked.

    Names in it that match no registered provider or model are reported as warnings.
    """
    from ._config import config_path, get_config, render_toml
    from ._registry import get_registry
    from ._routing import config_problems

    config = get_config()
    data = config.masked()
    problems = config_problems(config, get_registry())
    if as_json:
        click.echo(json.dumps({**data, "path": str(config_path()), "warnings": problems}, indent=2))
        return
    where = config.source or f"defaults (no file at {config_path()})"
    if config.environment:
        where += " and " + ", ".join(config.environment)
    click.echo(f"# the effective configuration, from {where}; secrets masked\n")
    click.echo(render_toml(data), nl=False)
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)


def _add_lazy_commands() -> None:
    # Their modules import only click at load time, so --help stays fast.
    from ._cli_record import record
    from ._cli_serve import serve

    cli.add_command(record)
    cli.add_command(serve)


_add_lazy_commands()


def main() -> None:
    """Console-script entry point."""
    _escape_what_stdout_cannot_encode()
    cli(prog_name="llmrelay")


def _escape_what_stdout_cannot_encode() -> None:
    """Write a character stdout's encoding cannot hold as an escape (``\\u041f``), not fail.

    An answer may hold what the terminal's encoding cannot (Cyrillic on an ASCII or cp1252
    console, a lone surrogate a server sent): printing it raised ``UnicodeEncodeError`` after
    the call was made and paid for. An escape keeps every character visible, where ``?``
    would lose it.
    """
    stdout = sys.stdout
    if isinstance(stdout, io.TextIOWrapper) and stdout.errors == "strict":
        stdout.reconfigure(errors="backslashreplace")


if __name__ == "__main__":  # pragma: no cover
    main()
