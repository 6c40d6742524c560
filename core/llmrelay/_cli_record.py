"""``llmrelay record``: call a provider for real and keep the exchange as a cassette.

Registered on the ``llmrelay`` command group in ``cli.py``. Like the rest of the command line,
it imports aiohttp, vcrpy and the providers only when it runs.
"""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path
from typing import Any

import click

from ._cli_types import (
    option_flags,
    reasoning_option,
    request_option,
    request_options,
    timeout_option,
    timeout_options,
    unsupported_here,
)

__all__ = ["record"]


@click.command()
@click.argument("prompt", nargs=-1, required=True)
@click.option(
    "--provider",
    "provider_name",
    required=True,
    metavar="NAME",
    help="The provider to call (see `llmrelay providers`).",
)
@click.option(
    "--cassette",
    "path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The cassette file to write (vcrpy YAML).",
)
@click.option("-m", "--model", default="", help="Model name or alias [default: the provider's].")
@click.option("-s", "--system", help="A system message sent before the prompt.")
@click.option(
    "--proxy",
    metavar="URL",
    help="http://, https://, socks4://, socks5:// or socks5h:// proxy (user:pass@ allowed).",
)
@click.option(
    "--base-url",
    metavar="URL",
    help="Send the request to this server (a local stand-in of the service, say) but record "
    "the provider's own URL, so the cassette replays for the provider unchanged.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the cassette if it exists (only once a new recording has succeeded).",
)
@timeout_option("Total seconds for the call;")
@request_option()
@reasoning_option()
def record(
    prompt: tuple[str, ...],
    provider_name: str,
    path: Path,
    model: str,
    system: str | None,
    proxy: str | None,
    base_url: str | None,
    overwrite: bool,
    timeout: float | str | None,
    request_options_given: tuple[tuple[str, Any], ...],
    show_reasoning: bool,
) -> None:
    """Call a provider for real with PROMPT and record the exchange into a new cassette.

    Secrets (keys, tokens, cookies, passwords) are scrubbed as in every llmrelay cassette.
    Nothing is retried, so the cassette holds exactly what one attempt sent and received. An
    existing cassette is never touched without --overwrite, and never replaced by a failed
    call. Replay the cassette with `llmrelay chat --replay PATH`.
    """
    from . import errors
    from ._cassettes import cassette
    from ._registry import get_registry

    text = " ".join(prompt)
    if not text.strip():
        raise click.UsageError("the prompt is empty")
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"cassette {str(path)!r} already exists; pass --overwrite to replace it"
        )
    registry = get_registry()
    if provider_name not in registry.providers:
        installed = ", ".join(registry.providers) or "none"
        raise click.BadParameter(
            f"no provider named {provider_name!r} (installed: {installed})",
            param_hint="'--provider'",
        )
    provider = registry.get(provider_name)
    scratch = path.with_name(f".{path.name}.recording")
    _check_writable(path, scratch)  # before the call, which may cost money
    messages: list[dict[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": text})
    asked = request_options(request_options_given)
    options: dict[str, Any] = {**asked, "max_retries": 0, **timeout_options(timeout)}
    if base_url:
        options["base_url"] = base_url
    # Bad messages, model, proxy or options are refused here, before anything is written.
    try:
        stream = provider.create_async_generator(model, messages, proxy=proxy, **options)
    except errors.UnsupportedOption as exc:  # (a recording holds what was asked: no dropping)
        raise unsupported_here(exc, can_drop=False) from None
    rewrite = (base_url.rstrip("/"), provider.url.rstrip("/")) if base_url else None

    async def run() -> errors.LLMRelayError | None:
        from ._cli_output import write_answer
        from ._transport import aclose

        try:
            whole = options.get("stream") is False  # recorded as complete() asks it
            await write_answer(stream, show_reasoning=show_reasoning, whole=whole)
        except errors.LLMRelayError as exc:
            return exc
        finally:
            await aclose()
        return None

    try:
        with cassette(scratch, mode="overwrite", rewrite=rewrite) as recorded:
            failure = asyncio.run(run())
    except BaseException:  # a provider bug, Ctrl-C: keep no half-made recording
        scratch.unlink(missing_ok=True)
        raise
    interactions = len(recorded)
    # (--overwrite: the cassette there before stays; else there was none, and none is made)
    kept = f"{path} is unchanged" if path.exists() else "no cassette written"
    if not scratch.exists():
        click.echo(f"nothing recorded: the request got no answer; {kept}", err=True)
    elif failure is not None and path.exists():
        scratch.unlink()
        click.echo(f"the call failed; {kept}", err=True)
    else:
        scratch.replace(path)
        what = "the failure" if failure is not None else f"{interactions} interaction(s)"
        click.echo(f"recorded {what} into {path}", err=True)
        replay = ["llmrelay", "chat", "-m", f"{provider.name}/{model}", "--replay", str(path)]
        if system:
            replay += ["-s", system]
        replay += option_flags(asked)  # the body recorded holds them: the replay must send them
        command = shlex.join([*replay, text])
        key_env = provider.api_key_env  # (None, or a name: the registry checked it)
        if key_env:
            # The provider asks for its key before the cassette can answer; the cassette
            # holds none, so any value does.
            command = f"{key_env}=replay {command}  (the cassette holds no key: any value of "
            command += f"{key_env} does)"
        click.echo(f"replay it with: {command}", err=True)
    if failure is not None:
        raise failure


def _check_writable(path: Path, scratch: Path) -> None:
    """Refuse a cassette path that cannot be written, before the call is made (and paid for):
    the answer was printed, then lost to a traceback from deep inside the recorder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch.touch()
        scratch.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, FileExistsError | NotADirectoryError):
            reason += " (a file stands where a directory is needed)"
        raise click.BadParameter(
            f"cannot write {str(path)!r}: {reason}", param_hint="'--cassette'"
        ) from None
