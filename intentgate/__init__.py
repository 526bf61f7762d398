"""IntentGate: an MCP gateway giving AI agents zero standing privilege.

The names below are the public API; every other module may change without notice.  They are
imported on first use, so that a tool server importing ``intentgate.verify`` does not load the
serving side (store, policy engines, web front).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .clock import Clock, FrozenClock, SystemClock
    from .config import GatewayConfig, load_config
    from .decide import CallRequest, Decider, TaskEnded, TaskStarted, Verdict
    from .errors import (
        ConfigError,
        GatewayError,
        IntentFileError,
        PolicyError,
        ReasonCode,
        StoreError,
        TaskError,
        TokenError,
    )
    from .identity import AgentIdentity
    from .intents import Intent, IntentRegistry, check_intents, load_intents
    from .keys import KeySet, PublicKeySet
    from .policy import EmbeddedEngine, OpaServerEngine, PolicyEngine, PolicyResult, make_engine
    from .review import AdminTokenIssuer, DecisionDetail, DecisionPublic, DecisionQuery, Reviewer, ReviewService
    from .runtime import Runtime
    from .tokens import ActionTokenIssuer, MintedToken
    from .verify import ActionClaims, ActionTokenVerifier, ConsumeOutcome, JtiLedger, SqliteJtiLedger

_EXPORTS = {
    "ActionClaims": "verify",
    "ActionTokenIssuer": "tokens",
    "ActionTokenVerifier": "verify",
    "AdminTokenIssuer": "review",
    "AgentIdentity": "identity",
    "CallRequest": "decide",
    "Clock": "clock",
    "ConfigError": "errors",
    "ConsumeOutcome": "verify",
    "Decider": "decide",
    "DecisionDetail": "review",
    "DecisionPublic": "review",
    "DecisionQuery": "review",
    "EmbeddedEngine": "policy",
    "FrozenClock": "clock",
    "GatewayConfig": "config",
    "GatewayError": "errors",
    "Intent": "intents",
    "IntentFileError": "errors",
    "IntentRegistry": "intents",
    "JtiLedger": "verify",
    "KeySet": "keys",
    "MintedToken": "tokens",
    "OpaServerEngine": "policy",
    "PolicyEngine": "policy",
    "PolicyError": "errors",
    "PolicyResult": "policy",
    "PublicKeySet": "keys",
    "ReasonCode": "errors",
    "ReviewService": "review",
    "Reviewer": "review",
    "Runtime": "runtime",
    "SqliteJtiLedger": "verify",
    "StoreError": "errors",
    "SystemClock": "clock",
    "TaskEnded": "decide",
    "TaskError": "errors",
    "TaskStarted": "decide",
    "TokenError": "errors",
    "Verdict": "decide",
    "check_intents": "intents",
    "load_config": "config",
    "load_intents": "intents",
    "make_engine": "policy",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'intentgate' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "ActionClaims",
    "ActionTokenIssuer",
    "ActionTokenVerifier",
    "AdminTokenIssuer",
    "AgentIdentity",
    "CallRequest",
    "Clock",
    "ConfigError",
    "ConsumeOutcome",
    "Decider",
    "DecisionDetail",
    "DecisionPublic",
    "DecisionQuery",
    "EmbeddedEngine",
    "FrozenClock",
    "GatewayConfig",
    "GatewayError",
    "Intent",
    "IntentFileError",
    "IntentRegistry",
    "JtiLedger",
    "KeySet",
    "MintedToken",
    "OpaServerEngine",
    "PolicyEngine",
    "PolicyError",
    "PolicyResult",
    "PublicKeySet",
    "ReasonCode",
    "ReviewService",
    "Reviewer",
    "Runtime",
    "SqliteJtiLedger",
    "StoreError",
    "SystemClock",
    "TaskEnded",
    "TaskError",
    "TaskStarted",
    "TokenError",
    "Verdict",
    "__version__",
    "check_intents",
    "load_config",
    "load_intents",
    "make_engine",
]
