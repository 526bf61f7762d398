"""IntentGate: an MCP gateway giving AI agents zero standing privilege.

The names below are the public API; every other module may change without notice.
"""

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
