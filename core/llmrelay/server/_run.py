"""Running the application: one event loop, or N worker processes sharing one port.

Shutdown is graceful and bounded. On SIGTERM (or Ctrl-C) the server stops listening at once,
``/ready`` turns 503, and running requests get ``shutdown_grace`` seconds to finish. Streams
still running after that receive ``data: {"error": ...}`` and ``data: [DONE]`` — a clean end a
client can report — and the process exits. A second signal skips the rest of the grace period.

aiohttp's own shutdown is not used for the grace period: it waits up to its timeout twice
(once for handlers to finish, once more after cancelling them) and cuts streams without a
word; this module waits once, then ends the streams itself.

Workers (``--workers N``): a supervisor process starts N worker processes (``spawn``: no state
inherited by accident), each with its own event loop and its own listening socket on the same
port (``SO_REUSEPORT``), so the kernel spreads connections across them with no accept lock.
The supervisor forwards signals, restarts a worker that dies, and gives up when workers keep
dying right after they start. Workers run in their own process group, so a Ctrl-C in the
terminal reaches only the supervisor, which then stops them in order; and a worker whose
supervisor vanished stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ._app import create_app
from ._idle import close_idle_connections

if TYPE_CHECKING:
    from .._config import Config
    from .._registry import Registry
from ._settings import ServerSettings, check_binding
from ._state import SHUTDOWN, STATE, ServerState

__all__ = ["SHUTDOWN", "RunOptions", "Server", "WorkersFailed", "run", "serving"]

log = logging.getLogger("llmrelay.server")

#: A worker that dies within this many seconds of starting counts as failing to start.
_QUICK_DEATH = 5.0
#: After this many quick deaths in a row the supervisor stops instead of restarting forever.
_MAX_QUICK_DEATHS = 3


class WorkersFailed(RuntimeError):
    """Workers kept dying right after they started (a port in use, a broken config, ...)."""


@dataclass(frozen=True)
class RunOptions:
    """Where and how ``llmrelay serve`` runs; ``settings`` is what each worker's app gets."""

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    settings: ServerSettings = field(default_factory=ServerSettings)
    log_level: str = "INFO"


class Server:
    """A started server: where it listens, and how to stop it gracefully."""

    def __init__(self, runner: web.AppRunner, state: ServerState) -> None:
        self.runner = runner
        self.state = state
        self._hurry = asyncio.Event()
        self._stopped = False

    @property
    def urls(self) -> list[str]:
        urls = []
        for address in self.runner.addresses:
            host, port = address[0], address[1]
            host = f"[{host}]" if ":" in host else host
            urls.append(f"http://{host}:{port}")
        return urls

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def port(self) -> int:
        return int(self.runner.addresses[0][1])

    def hurry(self) -> None:
        """End the grace period now (a second signal)."""
        self._hurry.set()

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop listening, let chat requests finish within ``grace`` seconds, end the rest."""
        if self._stopped:
            return
        self._stopped = True
        state = self.state
        state.draining = True
        grace = state.settings.shutdown_grace if grace is None else grace
        for site in list(self.runner.sites):
            await site.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if state.tasks:
            log.info(
                "stopped listening; waiting up to %gs for %d request(s)", grace, len(state.tasks)
            )
        await self._wait_for_tasks(deadline)
        if state.tasks:
            log.warning("grace period over: ending %d request(s)", len(state.tasks))
            pending = list(state.tasks)
            for task in pending:
                task.cancel(SHUTDOWN)
            await asyncio.wait(pending, timeout=2.0)
        await self.runner.cleanup()

    async def _wait_for_tasks(self, deadline: float) -> None:
        """Until the chat requests are done, the deadline passes, or :meth:`hurry` is called."""
        loop = asyncio.get_running_loop()
        hurry = loop.create_task(self._hurry.wait())
        try:
            while self.state.tasks and not hurry.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await asyncio.wait(
                    {*self.state.tasks, hurry},
                    timeout=remaining,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            hurry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hurry


@contextlib.asynccontextmanager
async def serving(
    app: web.Application | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    reuse_port: bool = False,
) -> AsyncIterator[Server]:
    """Serve ``app`` (default: ``create_app()``) on the running loop until the block ends.

    Handler cancellation is on: a client that disconnects cancels its handler, and with it the
    upstream request. Leaving the block shuts down gracefully (see :meth:`Server.shutdown`).
    """
    app = app if app is not None else create_app()
    runner = web.AppRunner(
        app,
        handle_signals=False,
        logger=_http_log,  # malformed requests: one line, without the offending header
        access_log=None,  # the app writes its own line, with model and provider
        handler_cancellation=True,
        shutdown_timeout=1.0,  # a backstop only: Server.shutdown does the waiting
    )
    await runner.setup()
    server = Server(runner, app[STATE])
    assert runner.server is not None  # (set up just above)
    sweeper = asyncio.get_running_loop().create_task(
        close_idle_connections(runner.server, app[STATE].idle), name="llmrelay-idle-sweeper"
    )
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=1024)
        await site.start()
        yield server
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await server.shutdown()


#: aiohttp's protocol logger for this server's connections (aiohttp's own is
#: ``aiohttp.server``, which other applications in the process may use as they like).
_http_log = logging.getLogger("llmrelay.server.http")


def _malformed_request(record: logging.LogRecord) -> bool:
    """Turn aiohttp's report of a request it could not parse into one line without its text.

    aiohttp logs such a request as an ERROR with a traceback whose message quotes the
    offending line: ``Authorization: Bearer <key>`` when the key carries a stray control
    character or is too long, ``Proxy-Authorization``, a URL's query. No secret may reach the
    log, and a client's malformed request is not a server error: the line says who sent it
    and what was wrong, by the exception's class (``LineTooLong``, ``InvalidHeader``), at
    INFO. Anything else aiohttp logs passes unchanged.
    """
    from aiohttp.http_exceptions import HttpProcessingError

    exc = record.exc_info[1] if record.exc_info else None
    bad = exc if isinstance(exc, HttpProcessingError) else None
    if bad is None and isinstance(exc, Exception):  # a body's decoding error, wrapped
        cause = exc.__cause__
        bad = cause if isinstance(cause, HttpProcessingError) else None
    if bad is None:
        return True
    if not _http_log.isEnabledFor(logging.INFO):
        return False  # checked at ERROR, aiohttp's level, before it became INFO
    client = record.args[0] if isinstance(record.args, tuple) and record.args else "a client"
    record.msg = "malformed HTTP request from %s: %s"
    record.args = (client, type(bad).__name__)
    record.exc_info = record.exc_text = None
    record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
    return True


_http_log.addFilter(_malformed_request)


class _OutOfDescriptors(logging.Filter):
    """asyncio's report of an ``accept()`` that failed for want of file descriptors, once per
    ``every`` seconds and as one line: the loop retries every listening socket and logs each
    failure with a traceback, which filled 349 MB of log in 100 s while the worker was out of
    descriptors."""

    every = 10.0

    def __init__(self) -> None:
        super().__init__()
        self._last: float | None = None
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("socket.accept() out of system resource"):
            return True
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every:
            self._dropped += 1
            return False
        exc = record.exc_info[1] if record.exc_info else None
        record.msg = "cannot accept connections: %s (%d more such failures not logged)"
        record.args = (exc or "out of system resources", self._dropped)
        record.exc_info = record.exc_text = None
        self._last, self._dropped = now, 0
        return True


# -- the process ---------------------------------------------------------------------------


def configure_logging(level: str) -> None:
    """Log lines to stderr, one per event, with the process id to tell workers apart.

    The format shows no thread or process name, so records do not look them up (the
    ``logging`` module's documented switches for that): the access log writes a record per
    request.
    """
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    )
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("llmrelay").setLevel(level.upper())
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _OutOfDescriptors) for f in asyncio_log.filters):
        asyncio_log.addFilter(_OutOfDescriptors())


class _Formatter(logging.Formatter):
    """The standard formatter, with the date and time of ``%(asctime)s`` formatted once per
    second instead of once per line (``time.strftime`` is most of a line's formatting, and an
    access log writes many lines a second). The text is the same to the character."""

    _second: int | None = None
    _stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            stamp = time.strftime(self.default_time_format, self.converter(record.created))
            self._second, self._stamp = second, stamp
        if not self.default_msec_format:
            return self._stamp
        return self.default_msec_format % (self._stamp, record.msecs)


def run(options: RunOptions) -> None:
    """Serve until SIGTERM or Ctrl-C (the ``llmrelay serve`` command).

    Raises:
        BindRefused: a non-loopback host without an API key.
        ConfigError: the configuration file or environment is invalid.
        OSError: the address cannot be bound.
        WorkersFailed: worker processes kept dying at start.
    """
    from .._config import get_config

    check_binding(options.host, options.settings.api_key)
    get_config()  # a broken configuration stops the start (once, before any worker)
    configure_logging(options.log_level)
    warn_of_setup_problems()  # here, once: not again by every worker
    if options.workers <= 1:
        asyncio.run(_serve(options, options.port, worker=None))
    else:
        _supervise(options)


def prepare_process(max_concurrency: int) -> None:
    """Size the process for ``max_concurrency`` requests at once, before serving any.

    Each request holds a client socket and an upstream one: raise the soft open-file limit to
    the hard one (warn if still short), let the upstream connection pool hold as many
    connections as requests may run, and import now the modules that error paths import
    lazily, so that running out of descriptors never also fails an import.
    """
    import resource

    import aiohttp_socks  # noqa: F401  (used by the transport's error mapping)

    from .._transport import get_transport

    needed = 2 * max_concurrency + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else max(soft, min(hard, 1 << 20))
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "open-file limit %d is low for --max-concurrency %d (about %d needed); "
            "raise it (ulimit -n, or LimitNOFILE= under systemd)",
            soft,
            max_concurrency,
            needed,
        )
    transport = get_transport()
    transport.limit = max(transport.limit, max_concurrency)


def warn_of_setup_problems() -> None:
    """Log, as warnings, what will make requests fail that the start can already tell:
    plugins that failed to load, no provider at all, and :func:`_setup_problems`.

    Called once by ``llmrelay serve`` before it serves or starts workers: each worker loads
    the same plugins and configuration, and saying it once per worker only repeated it.
    """
    from .._config import get_config
    from .._registry import get_registry

    registry = get_registry()
    for failure in registry.failures:
        log.warning("plugin %s failed to load: %s", failure.name, failure.error)
    if not registry.providers:
        log.warning("no providers installed: every chat request will get 404")
    for problem in _setup_problems(get_config(), registry):
        log.warning("%s", problem)


def _setup_problems(config: Config, registry: Registry) -> list[str]:
    """What will make requests fail that the start can already tell: configured endpoints no
    plugin serves or whose cached model list is unusable, and providers whose key variable is
    not set."""
    from .._endpoints import cache_problems
    from .._env import getenv
    from .._routing import unserved_endpoints_problem

    problems = []
    unserved = unserved_endpoints_problem(config, registry)
    if unserved:
        problems.append(unserved)
    problems += cache_problems(config.endpoints)
    for name, info in registry.providers.items():
        key_env = info.provider.api_key_env
        if key_env and not getenv(key_env) and not config.disabled(name):
            problems.append(
                f"{name} reads its API key from ${key_env}, which is not set: "
                "its requests will fail"
            )
    return problems


async def _serve(options: RunOptions, port: int, worker: int | None) -> None:
    """One event loop serving until told to stop; ``worker`` is set under a supervisor."""
    from .. import aclose
    from .._config import get_config
    from .._registry import get_registry

    get_config()  # a broken configuration stops the start, not the first request
    prepare_process(options.settings.max_concurrency)
    get_registry()  # plugins load now, not on the first request
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    server: Server | None = None

    def on_signal(signum: int) -> None:
        first = not stop.is_set()
        stop.set()
        if first:
            log.info("%s: shutting down gracefully", signal.Signals(signum).name)
        if (worker is None and not first) or (worker is not None and signum == signal.SIGINT):
            log.warning("%s: ending running requests now", signal.Signals(signum).name)
            if server is not None:
                server.hurry()

    # Under a supervisor SIGTERM is only ever "stop gracefully" (systemd sends it to every
    # process in the unit, and the supervisor forwards its own), and SIGINT, which only the
    # supervisor sends, means "hurry". Alone, a second SIGTERM or Ctrl-C means "hurry".
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except NotImplementedError:  # Windows: no loop signal handlers; Ctrl-C still works
            signal.signal(signum, lambda sig, _: loop.call_soon_threadsafe(on_signal, sig))
    watcher = loop.create_task(_watch_parent(stop)) if worker is not None else None
    try:
        app = create_app(options.settings)
        async with serving(app, options.host, port, reuse_port=worker is not None) as server:
            where = ", ".join(server.urls)
            if worker is None:
                log.info("listening on %s (pid %d)", where, os.getpid())
            else:
                log.info("worker %d listening on %s (pid %d)", worker, where, os.getpid())
            await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await aclose()
    log.info("stopped")


async def _watch_parent(stop: asyncio.Event) -> None:
    """Stop when the supervisor is gone (killed with SIGKILL, say): no orphan keeps serving."""
    parent = os.getppid()
    # Polling: the standard library has no portable "parent died" notification.
    while os.getppid() == parent:  # noqa: ASYNC110
        await asyncio.sleep(1.0)
    log.warning("the supervisor (pid %d) is gone: shutting down", parent)
    stop.set()


def _worker_main(options: RunOptions, port: int, index: int) -> None:
    """A worker process's entry point (run by ``multiprocessing`` with ``spawn``)."""
    os.setpgrp()  # out of the terminal's process group: Ctrl-C is the supervisor's business
    configure_logging(options.log_level)
    from ..errors import LLMRelayError

    try:
        asyncio.run(_serve(options, port, worker=index))
    except OSError as exc:
        log.error("worker %d cannot listen on %s:%d: %s", index, options.host, port, exc)
        sys.exit(1)
    except LLMRelayError as exc:  # the configuration broke after the supervisor checked it
        log.error("worker %d cannot start: %s", index, exc)
        sys.exit(1)


def _reserve_port(host: str, port: int) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket: it fixes the port for every worker when 0
    was asked for, and fails early, in one place, when the address cannot be had."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _supervise(options: RunOptions) -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("--workers needs SO_REUSEPORT, which this platform lacks; use one worker")
    reserved = _reserve_port(options.host, options.port)
    port = int(reserved.getsockname()[1])
    context = multiprocessing.get_context("spawn")
    signals: list[int] = []

    def start(index: int) -> Any:
        process = context.Process(
            target=_worker_main,
            args=(options, port, index),
            name=f"llmrelay-worker-{index}",
            daemon=False,
        )
        process.start()
        return process

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals.append(signum)
        forward = signal.SIGTERM if len(signals) == 1 else signal.SIGINT
        for process in workers:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, forward)

    workers: list[Any] = []
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    started: list[float] = []
    quick_deaths = 0
    try:
        for index in range(options.workers):
            workers.append(start(index))
            started.append(time.monotonic())
        host = f"[{options.host}]" if ":" in options.host else options.host
        log.info(
            "supervising %d workers on http://%s:%d (pid %d)",
            options.workers,
            host,
            port,
            os.getpid(),
        )
        while True:
            alive = [p for p in workers if p.is_alive()]
            if signals and not alive:
                break
            if not signals:
                for index, process in enumerate(workers):
                    if process.is_alive():
                        continue
                    process.join()
                    lived = time.monotonic() - started[index]
                    quick_deaths = quick_deaths + 1 if lived < _QUICK_DEATH else 0
                    if quick_deaths >= _MAX_QUICK_DEATHS:
                        raise WorkersFailed(
                            f"workers keep exiting right after they start (last exit code "
                            f"{process.exitcode}); see the log above"
                        )
                    log.error(
                        "worker %d (pid %s) exited with code %s after %.1fs; starting another",
                        index,
                        process.pid,
                        process.exitcode,
                        lived,
                    )
                    workers[index] = start(index)
                    started[index] = time.monotonic()
            multiprocessing.connection.wait([p.sentinel for p in alive] or [], timeout=0.25)
    finally:
        _stop_workers(workers, options.settings.shutdown_grace + 5.0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        reserved.close()
    log.info("all workers stopped")


def _stop_workers(workers: list[Any], timeout: float) -> None:
    """SIGTERM the workers still running, wait for them, and kill what outlives ``timeout``."""
    for process in workers:
        if process.is_alive() and process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in workers:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.error("worker pid %s did not stop in time: killing it", process.pid)
            process.kill()
            process.join(5.0)
