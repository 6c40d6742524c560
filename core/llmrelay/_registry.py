"""Find providers: load plugins from entry points, isolate the broken ones, resolve models.

The registry is built once per process and cached (``get_registry``). Each entry point loads on
its own, in name order, inside its own try/except: pluggy's own loader stops at the first broken
plugin, leaving an install-order-dependent half state, so llmrelay does not use it.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import inspect
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import errors
from ._hooks import ENTRY_POINT_GROUP, PROJECT_NAME, HookSpecs
from ._provider import Provider

__all__ = [
    "PluginFailure",
    "ProviderInfo",
    "Registry",
    "build_registry",
    "get_registry",
    "reset_registry",
]

log = logging.getLogger("llmrelay.plugins")

_REQUIRED_STR = ("name", "url", "default_model")
_REQUIRED_BOOL = (
    "working",
    "supports_stream",
    "supports_system_message",
    "supports_message_history",
    "needs_auth",
)


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or registered, with the reason.

    ``error`` is one line (``"ExceptionType: message"``); ``exception`` keeps the original, with
    its traceback, for ``--debug`` output.
    """

    name: str
    target: str
    error: str
    distribution: str | None = None
    exception: BaseException | None = field(default=None, compare=False, repr=False)


def _one_line(exc: BaseException) -> str:
    """``"Type: message"`` on one line (pluggy's validation errors span several)."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class ProviderInfo:
    """A registered provider and where it came from."""

    provider: type[Provider]
    plugin: str
    distribution: str | None


@dataclass
class Registry:
    """The providers known to this process, in registration order."""

    providers: dict[str, ProviderInfo] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)

    # -- building ---------------------------------------------------------------------------

    def add_plugin(
        self, plugin: object, name: str, distribution: str | None = None, target: str = ""
    ) -> bool:
        """Register one plugin's providers; record a failure instead of raising.

        All of a plugin's providers are checked before any is added, so a plugin either
        registers completely or not at all. A provider whose name is already taken is skipped
        with a ``RuntimeWarning`` (the first keeps its place); the plugin's others are added.
        """
        ok, duplicates = self._add_plugin(plugin, name, distribution, target)
        _warn_duplicates(duplicates, stacklevel=3)
        return ok

    def _add_plugin(
        self, plugin: object, name: str, distribution: str | None, target: str
    ) -> tuple[bool, list[str]]:
        """:meth:`add_plugin` without the warnings: returns them, so a build warns at its end.

        Under ``-W error`` a warning is an exception; raised only once the plugin (or the whole
        build) is in place, it cannot leave a plugin half-registered.
        """
        pm = pluggy.PluginManager(PROJECT_NAME)
        pm.add_hookspecs(HookSpecs)
        staged: list[type[Provider]] = []
        open_ = True

        def register(provider: type[Provider]) -> None:
            if not open_:
                raise RuntimeError(
                    f"plugin {name!r} called register() after register_providers returned"
                )
            staged.append(provider)

        try:
            pm.register(plugin, name=name)
            if not pm.hook.register_providers.get_hookimpls():
                raise TypeError(_no_hook(plugin))
            # Called through pluggy, so a hookimpl may take fewer arguments than the spec.
            pm.hook.register_providers(register=register)
            for provider in staged:
                check_provider(provider)
        except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() must not kill us
            self._fail(name, target or repr(plugin), exc, distribution)
            return False, []
        finally:
            open_ = False
        duplicates: list[str] = []
        for provider in staged:
            first = self.providers.get(provider.name)
            if first is not None:
                if first.provider is not provider or first.plugin != name:
                    duplicates.append(
                        f"provider name {provider.name!r} from plugin {name!r} is already "
                        f"registered by plugin {first.plugin!r}; keeping the first"
                    )
                continue
            self.providers[provider.name] = ProviderInfo(provider, name, distribution)
        return True, duplicates

    def _fail(self, name: str, target: str, exc: BaseException, distribution: str | None) -> None:
        error = _one_line(exc)
        self.failures.append(PluginFailure(name, target, error, distribution, exc))
        log.warning("plugin %r (%s) failed to load: %s", name, target, error)

    # -- looking up -------------------------------------------------------------------------

    def get(self, name: str) -> type[Provider]:
        """The provider registered as ``name``.

        Raises:
            LookupError (``ModelNotFound``): no such provider; suggests close names.
        """
        try:
            return self.providers[name].provider
        except KeyError:
            close = difflib.get_close_matches(name, list(self.providers), n=3, cutoff=0.5)
            raise errors.ModelNotFound(f"{name}/", close) from None

    def models(self) -> dict[str, list[str]]:
        """Every model and alias, with the names of the providers serving it, in resolve order."""
        return {name: [p.name for p, _ in pairs] for name, pairs in self.listing().items()}

    def listing(self) -> dict[str, list[tuple[type[Provider], str]]]:
        """Every model and alias, with the providers listing it (each with its own model
        name), in resolve order: what :meth:`resolve` gives for each name read as a bare
        name, never as ``provider/model`` pinned ("x/y" may be a model's own name).

        Made in one pass over the lists, not one search per name: a provider may list tens of
        thousands of models (a refreshed list), and ``llmrelay serve`` lists them on its loop.
        """
        listed: dict[str, list[tuple[type[Provider], str]]] = {}
        for info in self.providers.values():
            provider = info.provider
            for name in (*provider.models, *provider.model_aliases):
                pairs = listed.setdefault(name, [])
                if not pairs or pairs[-1][0] is not provider:  # a model also an alias: once
                    pairs.append((provider, provider.model_aliases.get(name, name)))
        return {name: _in_resolve_order(pairs) for name, pairs in listed.items()}

    def resolve(self, model: str) -> list[tuple[type[Provider], str]]:
        """The providers to try for ``model``, in order, each with its own model name.

        ``"provider/model"`` pins one provider when the prefix is a registered provider name;
        otherwise the whole string is a model name or alias. Working providers come first,
        then registration order.

        Raises:
            ModelNotFound: nothing serves ``model``; carries the closest known names.
        """
        prefix, sep, rest = model.partition("/")
        if sep and prefix in self.providers:
            provider = self.providers[prefix].provider
            return [(provider, provider.get_model(rest))]
        serving = self._serving(model)
        if not serving:
            known = list(dict.fromkeys(self.models_names()))
            raise errors.ModelNotFound(
                model, difflib.get_close_matches(model, known, n=3, cutoff=0.4)
            )
        return serving

    def _serving(self, model: str) -> list[tuple[type[Provider], str]]:
        """Providers listing ``model`` (a bare name or alias, never pinned), in resolve order."""
        serving = [
            (info.provider, info.provider.model_aliases.get(model, model))
            for info in self.providers.values()
            if model in info.provider.models or model in info.provider.model_aliases
        ]
        return _in_resolve_order(serving)

    def models_names(self, usable: Callable[[str], bool] | None = None) -> Iterable[str]:
        """Every name a model may be asked by: models, aliases and ``provider/model`` pins,
        of the providers whose name ``usable`` accepts (all, without it)."""
        for info in self.providers.values():
            if usable is not None and not usable(info.provider.name):
                continue
            yield from info.provider.models
            yield from info.provider.model_aliases
            yield from (f"{info.provider.name}/{m}" for m in info.provider.models)


def _in_resolve_order(
    pairs: list[tuple[type[Provider], str]],
) -> list[tuple[type[Provider], str]]:
    """``pairs`` (in registration order) with working providers first: ``sorted()`` is
    stable, so registration order breaks ties."""
    return sorted(pairs, key=_not_working)


def _not_working(pair: tuple[type[Provider], str]) -> bool:
    return not pair[0].working


def _no_hook(plugin: object) -> str:
    """Why ``plugin`` has no hook, in terms of what to fix: the usual slips are an entry
    point naming the hook or a provider instead of their module, and a forgotten marker."""
    if inspect.isfunction(plugin):
        return (
            f"the entry point names the function {plugin.__name__}(), not a plugin: point it "
            f"at the module holding the register_providers hook ({plugin.__module__!r})"
        )
    if isinstance(plugin, type) and issubclass(plugin, Provider):
        return (
            f"the entry point names the provider {plugin.__name__}, not a plugin: point it at "
            "the module whose register_providers hook registers it"
        )
    if callable(getattr(plugin, "register_providers", None)):
        return "its register_providers is not marked @llmrelay.hookimpl"
    return "it has no register_providers hook marked @llmrelay.hookimpl"


def check_provider(provider: object) -> None:
    """Refuse anything that is not a usable ``Provider`` subclass, saying what is wrong."""
    if not isinstance(provider, type) or not issubclass(provider, Provider):
        raise TypeError(f"{provider!r} is not a subclass of llmrelay.Provider")
    for attr in _REQUIRED_STR:
        value = getattr(provider, attr, None)
        if not isinstance(value, str) or not value:
            raise TypeError(f"provider {provider.__name__}.{attr} must be a non-empty string")
    if "/" in provider.name or provider.name != provider.name.strip():
        raise TypeError(f"provider name {provider.name!r} must not contain '/' or spaces")
    for attr in _REQUIRED_BOOL:
        if not isinstance(getattr(provider, attr, None), bool):
            raise TypeError(f"provider {provider.__name__}.{attr} must be a bool")
    key_env = getattr(provider, "api_key_env", None)
    if key_env is not None and (not isinstance(key_env, str) or not key_env):
        raise TypeError(
            f"provider {provider.__name__}.api_key_env must be None or the name of an "
            "environment variable"
        )
    if not isinstance(provider.models, tuple | list) or not all(
        isinstance(m, str) for m in provider.models
    ):
        raise TypeError(f"provider {provider.__name__}.models must be a sequence of strings")
    if provider.models and provider.default_model not in provider.models:
        raise TypeError(
            f"provider {provider.__name__}.default_model {provider.default_model!r} "
            "is not in its models"
        )
    aliases = provider.model_aliases
    if not isinstance(aliases, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()
    ):
        raise TypeError(f"provider {provider.__name__}.model_aliases must map str to str")
    if provider.models:
        unknown = sorted(v for v in aliases.values() if v not in provider.models)
        if unknown:
            raise TypeError(
                f"provider {provider.__name__}.model_aliases point at models it does not "
                f"list: {', '.join(map(repr, unknown))}"
            )
    implemented = [
        name
        for name in ("generate", "complete")
        if inspect.getattr_static(provider, name) is not inspect.getattr_static(Provider, name)
    ]
    if not implemented:
        raise TypeError(
            f"provider {provider.__name__} implements neither generate() (a stream of chunks) "
            "nor complete() (a whole answer)"
        )
    for name in implemented:
        method = inspect.getattr_static(provider, name)
        if not isinstance(method, classmethod):
            raise TypeError(f"provider {provider.__name__}.{name} must be a classmethod")
        if name == "generate" and inspect.iscoroutinefunction(method.__func__):
            # "async def" without a "yield": a coroutine, not the async generator it must be.
            raise TypeError(
                f"provider {provider.__name__}.generate is an async function that never "
                "yields: make it an async generator (yield the text chunks, then a "
                "FinishReason), or implement complete() for a whole answer instead"
            )
        if name == "generate" and inspect.isgeneratorfunction(method.__func__):
            # "def" with a "yield" (the "async" forgotten): it loads, then every call would
            # fail deep in the stream, far from the line to fix.
            raise TypeError(
                f"provider {provider.__name__}.generate is a plain generator (def with yield): "
                "make it an async generator, with async def"
            )
        if name == "complete" and _written_plain(method.__func__):
            # "def complete" (the "async" forgotten): every call would fail with "object
            # Completion can't be used in 'await' expression", reported as a bare TypeError.
            raise TypeError(
                f"provider {provider.__name__}.complete must be an async function (async def "
                "returning a Completion, without yield)"
            )


def _written_plain(func: object) -> bool:
    """Whether ``func`` is a ``complete`` written as a plain ``def`` or as an async generator.

    Only the method as written in its class counts. A decorator may well be right: an
    ``async def`` wrapper around a plain function (running it in a thread), or a plain
    wrapper returning the coroutine of the ``async def`` it wraps (``functools.wraps`` or
    not). So it is refused only when neither it nor what it wraps is an async function.
    """
    if not inspect.isfunction(func) or not func.__qualname__.endswith(".complete"):
        return False
    return not (
        inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(inspect.unwrap(func))
    )


def _split_env(name: str) -> set[str] | None:
    """The comma-separated names in ``name``; None when unset or blank (blank means "not set")."""
    items = {item.strip() for item in os.environ.get(name, "").split(",") if item.strip()}
    return items or None


def build_registry(
    entry_points: Iterable[md.EntryPoint] | None = None,
    extra_plugins: Iterable[tuple[str, object]] = (),
) -> Registry:
    """Build a registry from the ``llmrelay`` entry points (or the ones given).

    ``LLMRELAY_PLUGINS`` (comma-separated allow-list) and ``LLMRELAY_DISABLE_PLUGINS``
    (block-list) are read now. ``extra_plugins`` are ``(name, plugin)`` pairs registered after
    the entry points, as tests and embedding applications do.
    """
    allow = _split_env("LLMRELAY_PLUGINS")
    block = _split_env("LLMRELAY_DISABLE_PLUGINS") or set()
    registry = Registry()
    duplicates: list[str] = []
    eps = md.entry_points(group=ENTRY_POINT_GROUP) if entry_points is None else entry_points
    loaded: dict[str, str | None] = {}  # plugin name -> its distribution
    # sorted() is stable: two entry points with one name keep sys.path order (the first wins).
    for ep in sorted(eps, key=lambda e: e.name):
        if (allow is not None and ep.name not in allow) or ep.name in block:
            continue
        dist = ep.dist.name if ep.dist is not None else None
        if ep.name in loaded:
            duplicates.append(
                f"plugin name {ep.name!r} ({ep.value}) from distribution {dist!r} is already "
                f"taken by distribution {loaded[ep.name]!r}; keeping the first"
            )
            continue
        loaded[ep.name] = dist
        try:
            plugin: Any = ep.load()
        except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() must not kill us
            registry._fail(ep.name, ep.value, exc, dist)
            continue
        duplicates += registry._add_plugin(plugin, ep.name, dist, ep.value)[1]
    for name, plugin in extra_plugins:
        if (allow is None or name in allow) and name not in block:
            duplicates += registry._add_plugin(plugin, name, None, repr(plugin))[1]
    # Warned only now: under ``-W error`` a warning raises, and must not interrupt loading.
    _warn_duplicates(duplicates, stacklevel=3)
    return registry


def _warn_duplicates(messages: Iterable[str], stacklevel: int) -> None:
    for message in messages:
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)


_registry: Registry | None = None
_build_lock = threading.Lock()


def get_registry() -> Registry:
    """The process's registry, built on first use and then cached."""
    global _registry
    registry = _registry
    if registry is None:
        with _build_lock:
            if _registry is None:
                _registry = build_registry()
            registry = _registry
    return registry


def set_registry(registry: Registry | None) -> Callable[[], None]:
    """Replace the cached registry (``None`` rebuilds on next use); returns an undo function."""
    global _registry
    previous, _registry = _registry, registry

    def undo() -> None:
        global _registry
        _registry = previous

    return undo


def reset_registry() -> None:
    """Forget the cached registry, so the next use rebuilds it (after installing a plugin)."""
    set_registry(None)
