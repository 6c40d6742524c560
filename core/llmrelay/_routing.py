"""Decide the order providers are tried in: working, priority, recent health, registration.

Health is per process: a provider that failed recently is tried later, for a cool-down that
doubles with each consecutive failure (``cooldown`` seconds after the first, capped at
``max_cooldown``, both from the configuration) and resets on its first success. Once its
cool-down is over it takes its usual place again: the next request is its chance to recover
(and, if it fails, a longer cool-down).
"""

from __future__ import annotations

import difflib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._config import Config
from ._provider import Provider
from ._registry import Registry
from .errors import ModelNotFound

__all__ = [
    "Health",
    "config_problems",
    "health",
    "ordered",
    "route",
    "unserved_endpoints",
    "unserved_endpoints_problem",
]

#: Cool-down defaults, for a ``Health`` used without a configuration.
DEFAULT_COOLDOWN = 5.0
DEFAULT_MAX_COOLDOWN = 300.0


@dataclass
class _Record:
    failures: int = 0
    last_failure: float = 0.0
    #: Until when (on the clock) the provider asked not to be called again (Retry-After).
    asked_until: float = 0.0


class Health:
    """Consecutive failures per provider name, and the cool-down they earn.

    ``clock`` (``time.monotonic`` by default) is what "now" means; tests pass their own.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def failed(
        self, provider: str, since: float | None = None, retry_after: float | None = None
    ) -> None:
        """Count a failure of ``provider``, of a request sent at ``since`` (on ``clock``).

        A request sent before the last failure was counted fails in the same outage: it
        counts once with it. Ten requests in flight when a provider blipped counted ten
        consecutive failures, the longest cool-down at once, where the docs promise a
        cool-down that grows with each failed attempt after one.

        ``retry_after`` is how long the provider asked not to be called (a rate limit's
        Retry-After): its cool-down lasts at least that long (within the cool-down's cap), so
        requests meanwhile ask the others first instead of collecting the same 429.
        """
        with self._lock:
            record = self._records.setdefault(provider, _Record())
            now = self.clock()
            if retry_after is not None:
                record.asked_until = max(record.asked_until, now + retry_after)
            if since is not None and record.failures and record.last_failure >= since:
                return
            record.failures += 1
            record.last_failure = now

    def succeeded(self, provider: str) -> None:
        if provider not in self._records:  # healthy already: nearly every call, no lock
            return
        with self._lock:
            self._records.pop(provider, None)

    def failures(self, provider: str) -> int:
        """Consecutive failures since the last success."""
        record = self._records.get(provider)
        return record.failures if record else 0

    def cooldown(
        self,
        provider: str,
        base: float = DEFAULT_COOLDOWN,
        cap: float = DEFAULT_MAX_COOLDOWN,
    ) -> float:
        """Seconds this provider is still cooling down (0 when healthy).

        The cool-down after ``n`` consecutive failures is ``base * 2 ** (n - 1)``, at most
        ``cap``, counted from the last failure; or, if longer, until the time the provider
        asked for (``retry_after``), at most ``cap`` after the last failure.
        """
        record = self._records.get(provider)
        if record is None:
            return 0.0
        span = min(cap, base * 2.0 ** min(record.failures - 1, 64))
        until = max(record.last_failure + span, min(record.asked_until, record.last_failure + cap))
        return max(0.0, until - self.clock())

    def reset(self) -> None:
        with self._lock:
            self._records.clear()


#: The process-wide health record the relay updates.
health = Health()


def route(
    model: str, registry: Registry, config: Config, tracker: Health = health
) -> list[tuple[type[Provider], str]]:
    """The providers to try for ``model`` (after config aliases), best first.

    The order: working providers first, then higher configured ``priority``, then providers
    not cooling down after a recent failure (among those that are, fewer consecutive failures
    first), then registration order. Disabled providers are left out.

    Raises:
        ModelNotFound: nothing serves the model (with the closest model names and aliases),
            or every provider serving it is disabled in the configuration.
    """
    target = config.aliases.get(model, model)
    try:
        candidates = registry.resolve(target)
    except ModelNotFound as exc:
        found = _naming_failures(_not_found(model, target, exc, registry, config), registry)
        unserved = unserved_endpoints_problem(config, registry)
        if unserved:  # the model may be one of theirs
            found = _with_message(found, f"{found} ({unserved})")
        raise found from None
    return ordered(model, candidates, registry, config, tracker)


def ordered(
    model: str,
    candidates: list[tuple[type[Provider], str]],
    registry: Registry,
    config: Config,
    tracker: Health = health,
) -> list[tuple[type[Provider], str]]:
    """``candidates`` (the providers ``registry`` resolves ``model`` to) in :func:`route`'s
    order, disabled providers left out.

    Raises:
        ModelNotFound: every candidate is disabled in the configuration.
    """
    # Without [providers.*] settings nothing is disabled: no filtering per request then.
    usable = (
        [pair for pair in candidates if not config.disabled(pair[0].name)]
        if config.providers
        else candidates
    )
    if not usable:
        names = ", ".join(dict.fromkeys(p.name for p, _ in candidates))
        raise _with_message(
            ModelNotFound(model, []),
            f"no provider serves model {model!r}: {names} "
            f"{'is' if len(candidates) == 1 else 'are'} disabled in the configuration "
            f"({config.source or 'defaults'})",
        )
    if len(usable) == 1:
        return usable  # a pinned provider, or the only one serving the model: nothing to order
    order = {name: i for i, name in enumerate(registry.providers)}

    def key(pair: tuple[type[Provider], str]) -> tuple[bool, int, bool, int, int]:
        name = pair[0].name
        cooling = tracker.cooldown(name, config.cooldown, config.max_cooldown) > 0
        return (
            not pair[0].working,
            -config.priority(name),
            cooling,
            tracker.failures(name) if cooling else 0,
            order.get(name, len(order)),
        )

    return sorted(usable, key=key)


def _not_found(
    model: str, target: str, exc: ModelNotFound, registry: Registry, config: Config
) -> ModelNotFound:
    """``exc`` told in the caller's words: the alias they used, close aliases suggested."""
    if target != model:
        return _with_message(
            ModelNotFound(model, exc.suggestions),
            f"alias {model!r} points at {target!r}, which no provider serves "
            f"(fix [aliases] in {config.source or 'the configuration'}): {exc}",
        )
    prefix, pinned, _ = model.partition("/")
    if pinned and prefix in registry.providers:
        return exc  # the provider's own suggestions: its models
    # Names of disabled providers are not suggested: they lead straight to another refusal.
    enabled = (lambda name: not config.disabled(name)) if config.providers else None
    known = [*registry.models_names(enabled), *config.aliases]
    close = difflib.get_close_matches(model, list(dict.fromkeys(known)), n=3, cutoff=0.4)
    found = ModelNotFound(model, close or ([] if enabled else exc.suggestions))
    if pinned and not any(name.startswith(f"{prefix}/") for name in known):
        # "name/model" with no provider "name", and no model named "name/...": most often a
        # plugin not installed (model names may hold "/": "meta-llama/Llama-3.1-8B")
        names = ", ".join(registry.providers) or "none"
        hint = (
            f"; did you mean {', '.join(map(repr, found.suggestions))}?"
            if found.suggestions
            else ""
        )
        return _with_message(
            found,
            f"no provider serves model {model!r}: no provider is registered as {prefix!r} "
            f"(registered: {names}; is its plugin installed?){hint}",
        )
    return found


def _naming_failures(exc: ModelNotFound, registry: Registry) -> ModelNotFound:
    """``exc``, naming the plugins that failed to load: one of them may be what should serve
    the model, and their warnings go to a logger that nothing prints unless configured."""
    if not registry.failures:
        return exc
    names = ", ".join(failure.name for failure in registry.failures)
    return _with_message(
        exc, f"{exc} (plugin(s) that failed to load: {names}; `llmrelay providers` says why)"
    )


def _with_message(exc: ModelNotFound, message: str) -> ModelNotFound:
    # ModelNotFound words its own message; these two cases need more than "no provider serves".
    exc.args = (message,)
    return exc


#: The distribution whose plugin turns ``[[endpoints]]`` into providers.
ENDPOINTS_PLUGIN = "llmrelay-openai-compat"


def unserved_endpoints(config: Config, registry: Registry) -> list[str]:
    """The ``[[endpoints]]`` no registered provider stands for: their plugin
    (``llmrelay-openai-compat``) is not installed, disabled, or failed to load."""
    return [e.name for e in config.endpoints if e.name not in registry.providers]


def unserved_endpoints_problem(config: Config, registry: Registry) -> str | None:
    """What to say of the ``[[endpoints]]`` no provider stands for; None when there are none."""
    names = unserved_endpoints(config, registry)
    if not names:
        return None
    listed = ", ".join(map(repr, names))
    return (
        f"[[endpoints]] {listed}: no provider is registered for "
        f"{'it' if len(names) == 1 else 'them'}; OpenAI-compatible endpoints are served by "
        f"the {ENDPOINTS_PLUGIN} plugin: is it installed, and not disabled "
        "(`llmrelay providers` lists what loaded)?"
    )


def config_problems(config: Config, registry: Registry) -> list[str]:
    """What in ``config`` names providers or models this registry does not know (typos),
    endpoints nothing serves or whose cached model list is unusable, and aliases that hide a
    model served under the same name."""
    from ._endpoints import cache_problems

    problems = []
    unserved = unserved_endpoints_problem(config, registry)
    if unserved:
        problems.append(unserved)
    problems += cache_problems(config.endpoints)
    for name in config.providers:
        if name not in registry.providers:
            close = difflib.get_close_matches(name, list(registry.providers), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"[providers.{name}]: no provider is registered as {name!r}{hint}")
    for alias, target in config.aliases.items():
        try:
            registry.resolve(target)
        except LookupError as exc:
            problems.append(f"[aliases] {alias} = {target!r}: {exc}")
        hidden = _hidden_by(registry, alias, target)
        if hidden:  # aliases come first: what the name served is out of reach
            problems.append(
                f"[aliases] {alias} = {target!r}: {alias!r} is served by {hidden}; the alias "
                f"hides it (requests for {alias!r} go to {target!r}): rename the alias"
            )
    default = config.aliases.get(config.default_model, config.default_model)
    if not _serves(registry, default):
        problems.append(f"default_model {config.default_model!r}: no provider serves it")
    return problems


def _hidden_by(registry: Registry, alias: str, target: str) -> str:
    """The providers whose model ``alias`` names and the alias sends elsewhere ("" if none):
    ``llama3 = "qwen"`` hides the providers serving llama3; ``gpt-4o-mini =
    "pizzagpt/gpt-4o-mini"`` (one of its providers chosen) hides nothing."""
    try:
        served = registry.resolve(alias)
    except LookupError:
        return ""
    try:
        kept = set(registry.resolve(target))
    except LookupError:  # (said apart: the alias points at nothing)
        kept = set()
    return ", ".join(dict.fromkeys(p.name for p, m in served if (p, m) not in kept))


def _serves(registry: Registry, model: str) -> bool:
    try:
        registry.resolve(model)
    except LookupError:
        return False
    return True
