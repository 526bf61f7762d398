"""Reason codes and the exception tree.

Every refusal IntentGate makes carries a reason code from :class:`ReasonCode`, a closed
enum shared by the audit log, the CLI, the REST API and agents.  A reason may carry a
detail after a colon (``argument_constraint:amount``, ``policy:refund_over_limit``); the
part before the colon is always one of the enum values.

Exceptions::

    GatewayError                    (code: ReasonCode)
    ├── ConfigError                 invalid configuration, intents or policy files
    │   └── IntentFileError         one intent file is invalid (names file/intent/step/field)
    ├── PolicyError                 the policy engine failed or returned a malformed result
    ├── StoreError                  the database failed or timed out
    ├── TaskError                   a task cannot be started or used
    └── TokenError                  an action token failed verification or consumption

Messages of ``TokenError`` and identity failures are for the audit log and the operator;
agents only ever see the opaque code (see ``DESIGN.md``: errors for agents vs attackers).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ConfigError",
    "GatewayError",
    "IntentFileError",
    "PolicyError",
    "ReasonCode",
    "StoreError",
    "TaskError",
    "TokenError",
    "reason",
    "reason_code_of",
]


class ReasonCode(StrEnum):
    """Why a call was denied, held or failed.  Closed: add here, document in README."""

    # identity
    UNAUTHENTICATED = "unauthenticated"
    # requests
    MALFORMED_REQUEST = "malformed_request"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNKNOWN_TOOL = "unknown_tool"
    RATE_LIMITED = "rate_limited"
    UNKNOWN_RESOURCE = "unknown_resource"
    UNKNOWN_PROMPT = "unknown_prompt"
    # MCP sessions on the HTTP front
    SESSION_NOT_OWNED = "session_not_owned"
    SESSION_LIMIT = "session_limit"
    # intents and tasks
    UNKNOWN_INTENT = "unknown_intent"
    AGENT_NOT_PERMITTED = "agent_not_permitted"
    INVALID_PARAMS = "invalid_params"
    UNKNOWN_TASK = "unknown_task"
    TASK_NOT_OWNED = "task_not_owned"
    TASK_EXPIRED = "task_expired"
    TASK_ENDED = "task_ended"
    MISSING_TASK_CONTEXT = "missing_task_context"
    # who began the task
    TASK_ISSUER_REQUIRED = "task_issuer_required"
    ISSUER_NOT_PERMITTED = "issuer_not_permitted"
    INVALID_TASK_GRANT = "invalid_task_grant"
    TASK_GRANT_EXPIRED = "task_grant_expired"
    TASK_GRANT_AGENT = "task_grant_agent"
    TASK_GRANT_REPLAYED = "task_grant_replayed"
    # workflow
    UNKNOWN_STEP = "unknown_step"
    STEP_OUT_OF_ORDER = "step_out_of_order"
    TOOL_MISMATCH = "tool_mismatch"
    MAX_CALLS_EXCEEDED = "max_calls_exceeded"
    ARGUMENT_CONSTRAINT = "argument_constraint"
    ARGUMENT_MISSING = "argument_missing"
    ARGUMENT_NOT_ALLOWED = "argument_not_allowed"
    BINDING_MISMATCH = "binding_mismatch"
    BINDING_UNRESOLVED = "binding_unresolved"
    CONCURRENT_STEP = "concurrent_step"
    # cross-task limits
    BUDGET_EXCEEDED = "budget_exceeded"
    # policy
    POLICY = "policy"
    POLICY_DENIED = "policy_denied"
    POLICY_ERROR = "policy_error"
    # human approval
    APPROVAL_REQUIRED = "approval_required"
    POLICY_HOLD = "policy_hold"
    APPROVED = "approved"
    BREAK_GLASS = "break_glass"
    # action tokens
    INVALID_TOKEN = "invalid_token"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"
    TOKEN_AUDIENCE = "token_audience"
    TOKEN_TOOL = "token_tool"
    TOKEN_ARGUMENTS = "token_arguments"
    TOKEN_REPLAYED = "token_replayed"
    TOKEN_REVOKED = "token_revoked"
    # who may redeem action tokens at the gateway
    REDEEMER_NOT_PERMITTED = "redeemer_not_permitted"
    # upstream tool servers
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_RESULT_TOO_LARGE = "upstream_result_too_large"
    # what an upstream asks the agent's client during a call (sampling, elicitation, roots)
    ASK_UNATTRIBUTED = "ask_unattributed"
    ASK_UNSUPPORTED = "ask_unsupported"
    # the multi-round-trip continuation of a call (2026-07-28 agents: input_responses + request_state)
    INPUT_CONTINUATION = "input_continuation"
    REQUEST_STATE_INVALID = "request_state_invalid"
    REQUEST_STATE_EXPIRED = "request_state_expired"
    REQUEST_STATE_MISMATCH = "request_state_mismatch"
    REQUEST_STATE_REPLAYED = "request_state_replayed"
    INPUT_RESPONSE_UNASKED = "input_response_unasked"
    # infrastructure
    STORE_ERROR = "store_error"
    INTERNAL_ERROR = "internal_error"


def reason(code: ReasonCode, detail: str | None = None) -> str:
    """Render a reason string: ``code`` or ``code:detail``."""
    return code.value if not detail else f"{code.value}:{detail}"


def reason_code_of(text: str) -> ReasonCode:
    """The enum part of a rendered reason (raises ``ValueError`` if not in the enum)."""
    return ReasonCode(text.split(":", 1)[0])


class GatewayError(Exception):
    """Base of every error IntentGate raises on purpose.  ``code`` is stable."""

    code: ReasonCode = ReasonCode.INTERNAL_ERROR

    def __init__(
        self, message: str, *, code: ReasonCode | None = None, decision_id: str | None = None
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.decision_id = decision_id

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(GatewayError):
    """Configuration, intent or policy files are invalid; raised at load time."""

    code = ReasonCode.INTERNAL_ERROR


class IntentFileError(ConfigError):
    """One or more problems in intent files.  ``problems`` lists one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class PolicyError(GatewayError):
    """The policy engine failed, timed out or returned something off-contract."""

    code = ReasonCode.POLICY_ERROR


class StoreError(GatewayError):
    """The database failed or timed out."""

    code = ReasonCode.STORE_ERROR


class TaskError(GatewayError):
    """A task cannot be begun or used (unknown intent, bad params, not owned...)."""


class TokenError(GatewayError):
    """An action token failed verification or could not be consumed."""

    code = ReasonCode.INVALID_TOKEN
