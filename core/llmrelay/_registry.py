"""Find providers: load plugins from entry points, isolate the broken ones, resolve models.

The registry is built once per process and cached (``get_registry``). Each entry point loads on
its own, in name order, inside its own try/except: pluggy's own loader stops at the first broken
plugin, leaving an install-order-dependent half state, so llmrelay does not use it.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import logging
import os
import warnings
from collections.abc import Callable, Iterable
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
    """A plugin that could not be loaded or registered, with the reason."""

    name: str
    target: str
    error: str
    distribution: str | None = None


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
        registers completely or not at all.
        """
        pm = pluggy.PluginManager(PROJECT_NAME)
        pm.add_hookspecs(HookSpecs)
        staged: list[type[Provider]] = []
        try:
            pm.register(plugin, name=name)
            impls = pm.hook.register_providers.get_hookimpls()
            if not impls:
                raise TypeError("it has no register_providers hook marked @llmrelay.hookimpl")
            for impl in impls:
                impl.function(register=staged.append)
            for provider in staged:
                check_provider(provider)
        except Exception as exc:
            self.failures.append(
                PluginFailure(
                    name, target or repr(plugin), f"{type(exc).__name__}: {exc}", distribution
                )
            )
            log.warning("plugin %r failed to load: %s: %s", name, type(exc).__name__, exc)
            return False
        for provider in staged:
            if provider.name in self.providers:
                first = self.providers[provider.name]
                warnings.warn(
                    f"provider name {provider.name!r} from plugin {name!r} is already registered "
                    f"by plugin {first.plugin!r}; keeping the first",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            self.providers[provider.name] = ProviderInfo(provider, name, distribution)
        return True

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
        names: dict[str, None] = {}
        for info in self.providers.values():
            names.update(dict.fromkeys(info.provider.models))
            names.update(dict.fromkeys(info.provider.model_aliases))
        return {model: [p.name for p, _ in self.resolve(model)] for model in names}

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
        serving = [
            (info.provider, info.provider.model_aliases.get(model, model))
            for info in self.providers.values()
            if model in info.provider.models or model in info.provider.model_aliases
        ]
        if not serving:
            known = list(self.models_names())
            raise errors.ModelNotFound(
                model, difflib.get_close_matches(model, known, n=3, cutoff=0.4)
            )
        # sorted() is stable: registration order breaks ties.
        return sorted(serving, key=lambda pair: not pair[0].working)

    def models_names(self) -> Iterable[str]:
        for info in self.providers.values():
            yield from info.provider.models
            yield from info.provider.model_aliases
            yield from (f"{info.provider.name}/{m}" for m in info.provider.models)


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
    if not isinstance(provider.models, tuple | list) or not all(
        isinstance(m, str) for m in provider.models
    ):
        raise TypeError(f"provider {provider.__name__}.models must be a sequence of strings")
    if provider.models and provider.default_model not in provider.models:
        raise TypeError(
            f"provider {provider.__name__}.default_model {provider.default_model!r} "
            "is not in its models"
        )
    if provider.generate.__func__ is Provider.generate.__func__:  # type: ignore[attr-defined]
        raise TypeError(f"provider {provider.__name__} does not implement generate()")


def _split_env(name: str) -> set[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return {item.strip() for item in raw.split(",") if item.strip()}


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
    eps = md.entry_points(group=ENTRY_POINT_GROUP) if entry_points is None else entry_points
    seen: set[str] = set()
    for ep in sorted(eps, key=lambda e: e.name):
        if ep.name in seen or (allow is not None and ep.name not in allow) or ep.name in block:
            continue
        seen.add(ep.name)
        dist = ep.dist.name if ep.dist is not None else None
        try:
            plugin: Any = ep.load()
        except Exception as exc:
            registry.failures.append(
                PluginFailure(ep.name, ep.value, f"{type(exc).__name__}: {exc}", dist)
            )
            log.warning("plugin %r (%s) failed to import: %s", ep.name, ep.value, exc)
            continue
        registry.add_plugin(plugin, ep.name, dist, ep.value)
    for name, plugin in extra_plugins:
        if (allow is None or name in allow) and name not in block:
            registry.add_plugin(plugin, name, None, repr(plugin))
    return registry


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process's registry, built on first use and then cached."""
    global _registry
    if _registry is None:
        _registry = build_registry()
    return _registry


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
