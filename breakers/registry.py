"""Breakers by name, so every call site of one dependency shares one breaker and its listeners."""

from __future__ import annotations

import threading
import time

from breakers.config import BreakerConfig, BreakerConfigError
from breakers.core import BreakerSnapshot, CircuitBreaker, Clock, Listener


class BreakerRegistry:
    """Creates each named breaker once; listeners added here reach every breaker, present and future."""

    def __init__(self, defaults: BreakerConfig | None = None, *, clock: Clock = time.monotonic_ns) -> None:
        self.defaults = defaults or BreakerConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._listeners: list[Listener] = []

    def get(self, name: str, config: BreakerConfig | None = None) -> CircuitBreaker:
        """The breaker called `name`, created with `config` (else the defaults) on first use.

        Asking again with different options is an error rather than a silent second breaker."""
        with self._lock:
            existing = self._breakers.get(name)
            if existing is not None:
                if config is not None and config != existing.config:
                    raise BreakerConfigError(f"name: breaker {name!r} already exists with other options")
                return existing
            breaker = CircuitBreaker(name, config or self.defaults, clock=self._clock,
                                     listeners=self._listeners)
            self._breakers[name] = breaker
            return breaker

    def add_listener(self, listener: Listener) -> None:
        """Report every state change of every breaker of this registry to `listener`."""
        with self._lock:
            self._listeners.append(listener)
            for breaker in self._breakers.values():
                breaker.add_listener(listener)

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def names(self) -> list[str]:
        """Names of the breakers created so far, sorted."""
        return sorted(self._breakers)

    def snapshots(self) -> list[BreakerSnapshot]:
        """Every breaker's counters, by name."""
        return [self._breakers[name].snapshot() for name in self.names()]


default_registry = BreakerRegistry()
"""The process-wide registry `breaker(...)` uses."""


def breaker(name: str, config: BreakerConfig | None = None) -> CircuitBreaker:
    """The process-wide breaker called `name` (see BreakerRegistry.get)."""
    return default_registry.get(name, config)
