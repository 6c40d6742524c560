"""``llmrelay serve``: the OpenAI-compatible server, as a click command.

A module of its own so the command can be added to the ``llmrelay`` group with one line
(``cli.add_command(serve)``) and run alone (``python -m llmrelay._cli_serve``). Like the rest
of the CLI it imports nothing heavy until it runs: ``llmrelay --help`` stays fast.
"""

from __future__ import annotations

from typing import Any

import click

from ._cli_types import FiniteSeconds

__all__ = ["main", "serve"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0: any."
)
@click.option(
    "--api-key",
    envvar="LLMRELAY_API_KEY",
    metavar="KEY",
    help="Clients must send 'Authorization: Bearer KEY'. Prefer the LLMRELAY_API_KEY "
    "variable: a command-line argument is visible to every user of the machine. Required "
    "to listen beyond 127.0.0.1.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Processes sharing the port (SO_REUSEPORT); one per CPU core uses them all.",
)
@click.option(
    "--max-concurrency",
    type=click.IntRange(1),
    default=None,
    help="Chat requests per worker at once; more get 503 with Retry-After. [default: 256]",
)
@click.option(
    "--max-body",
    "max_body",
    type=click.IntRange(1024),
    default=None,
    metavar="BYTES",
    help="Largest request body, in bytes; larger gets 413. [default: 4194304 (4 MiB)]",
)
@click.option(
    "--body-timeout",
    type=FiniteSeconds(0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Time a client gets to send its request body; 408 after it. [default: 60]",
)
@click.option(
    "--header-timeout",
    type=FiniteSeconds(0, min_open=True),
    default=None,
    metavar="SECONDS",
    help=(
        "Time a connection may go without a request in progress (sending none, or half its "
        "headers, or idle between requests) before it is closed. [default: 60]"
    ),
)
@click.option(
    "--shutdown-grace",
    type=FiniteSeconds(0),
    default=None,
    metavar="SECONDS",
    help="Time running requests get to finish after SIGTERM. [default: 25]",
)
@click.option(
    "--drop-unsupported",
    is_flag=True,
    help="Send each provider the request without the options it does not support, instead "
    "of skipping it (or answering 400 when none supports them).",
)
@click.option("--no-access-log", is_flag=True, help="Do not log one line per request.")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
def serve(
    host: str,
    port: int,
    api_key: str | None,
    workers: int,
    max_concurrency: int | None,
    max_body: int | None,
    body_timeout: float | None,
    header_timeout: float | None,
    shutdown_grace: float | None,
    drop_unsupported: bool,
    no_access_log: bool,
    log_level: str,
) -> None:
    """Serve an OpenAI-compatible API (POST /v1/chat/completions, GET /v1/models).

    Any OpenAI client works against it: point its base URL at http://HOST:PORT/v1. Without an
    API key the server only listens on loopback. SIGTERM or Ctrl-C stops it gracefully.
    """
    from .errors import LLMRelayError
    from .server import BindRefused, RunOptions, ServerSettings, WorkersFailed, run
    from .server._settings import (
        DEFAULT_BODY_TIMEOUT,
        DEFAULT_HEADER_TIMEOUT,
        DEFAULT_MAX_BODY_BYTES,
        DEFAULT_MAX_CONCURRENCY,
        DEFAULT_SHUTDOWN_GRACE,
        api_key_problem,
    )

    if api_key is not None:
        problem = api_key_problem(api_key.strip())
        if problem:
            raise click.BadParameter(problem, param_hint="--api-key / LLMRELAY_API_KEY")
    settings = ServerSettings(
        api_key=api_key,
        max_body_bytes=max_body or DEFAULT_MAX_BODY_BYTES,
        body_timeout=body_timeout or DEFAULT_BODY_TIMEOUT,
        header_timeout=header_timeout or DEFAULT_HEADER_TIMEOUT,
        max_concurrency=max_concurrency or DEFAULT_MAX_CONCURRENCY,
        shutdown_grace=DEFAULT_SHUTDOWN_GRACE if shutdown_grace is None else shutdown_grace,
        drop_unsupported=drop_unsupported,
        access_log=not no_access_log,
    )
    options = RunOptions(
        host=host, port=port, workers=workers, settings=settings, log_level=log_level
    )
    try:
        run(options)
    except BindRefused as exc:
        raise click.UsageError(str(exc)) from None
    except (WorkersFailed, LLMRelayError) as exc:  # LLMRelayError: a broken configuration
        raise StartFailed(str(exc)) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StartFailed(f"cannot listen on {host}:{port}: {reason}") from None


class StartFailed(click.ClickException):
    """The server could not start; shown as every other command's errors are (``error: ...``,
    exit status 1), not as click's ``Error: ...``."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def main() -> None:
    """Run the command alone: ``python -m llmrelay._cli_serve --port 8080``."""
    serve(prog_name="llmrelay serve")


if __name__ == "__main__":
    main()
