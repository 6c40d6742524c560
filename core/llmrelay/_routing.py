"""Decide the order providers are tried in: working, priority, recent health, registration.

Health is per process: a provider that failed recently is tried later, for a cool-down that
doubles with each consecutive failure (capped) and resets on its first success.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ._config import Config
from ._provider import Provider
from ._registry import Registry
from .errors import ModelNotFound

__all__ = ["Health", "health", "route"]


@dataclass
class _Record:
    failures: int = 0
    last_failure: float = 0.0


class Health:
    """Consecutive failures per provider name, and the cool-down they earn."""

    def __init__(self, base_cooldown: float = 5.0, max_cooldown: float = 300.0) -> None:
        self.base_cooldown = base_cooldown
        self.max_cooldown = max_cooldown
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def failed(self, provider: str) -> None:
        with self._lock:
            record = self._records.setdefault(provider, _Record())
            record.failures += 1
            record.last_failure = time.monotonic()

    def succeeded(self, provider: str) -> None:
        with self._lock:
            self._records.pop(provider, None)

    def cooldown(self, provider: str) -> float:
        """Seconds this provider is still cooling down (0 when healthy)."""
        record = self._records.get(provider)
        if record is None:
            return 0.0
        span = min(self.max_cooldown, self.base_cooldown * 2.0 ** (record.failures - 1))
        return max(0.0, record.last_failure + span - time.monotonic())

    def failures(self, provider: str) -> int:
        record = self._records.get(provider)
        return record.failures if record else 0

    def reset(self) -> None:
        with self._lock:
            self._records.clear()


#: The process-wide health record the relay updates.
health = Health()


def route(
    model: str, registry: Registry, config: Config, tracker: Health = health
) -> list[tuple[type[Provider], str]]:
    """The providers to try for ``model`` (after config aliases), best first.

    Raises:
        ModelNotFound: nothing serves the model, or every provider serving it is disabled.
    """
    target = config.aliases.get(model, model)
    candidates = [
        (provider, name)
        for provider, name in registry.resolve(target)
        if not config.disabled(provider.name)
    ]
    if not candidates:
        raise ModelNotFound(model, [])
    order = {
        provider.name: i
        for i, provider in enumerate(p.provider for p in registry.providers.values())
    }
    return sorted(
        candidates,
        key=lambda pair: (
            not pair[0].working,
            -config.priority(pair[0].name),
            tracker.cooldown(pair[0].name) > 0,
            tracker.failures(pair[0].name),
            order.get(pair[0].name, len(order)),
        ),
    )
