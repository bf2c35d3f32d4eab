"""Circuit breakers for services to embed: sync and async, by name, reporting to `medkit serve`.

See docs/breakers.md for usage and every option.
"""

from breakers.config import BreakerConfig, BreakerConfigError
from breakers.core import (
    BreakerSnapshot,
    CircuitBreaker,
    CircuitOpenError,
    Guard,
    Outcome,
    State,
    StateChange,
    classify,
)
from breakers.follower import EntityFollower
from breakers.registry import BreakerRegistry, breaker, default_registry
from breakers.reporter import GatewayReporter

__all__ = [
    "BreakerConfig",
    "BreakerConfigError",
    "BreakerRegistry",
    "BreakerSnapshot",
    "CircuitBreaker",
    "CircuitOpenError",
    "EntityFollower",
    "GatewayReporter",
    "Guard",
    "Outcome",
    "State",
    "StateChange",
    "breaker",
    "classify",
    "default_registry",
]
