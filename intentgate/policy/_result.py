"""The policy contract: what an engine answers, and the interface every engine implements."""

from __future__ import annotations

from typing import Annotated, Any, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from ..errors import PolicyError
from ._notes import ReasonNote

__all__ = ["DECISION_PATH", "PolicyEngine", "PolicyResult", "parse_result"]

DECISION_PATH = "data.intentgate.decision"


class PolicyResult(BaseModel):
    """The policy's answer for one call (the contract in DESIGN.md).

    ``hold`` is not a deny: an allowed call that the policy wants held waits for a reviewer.
    ``ttl_seconds`` is the action token's lifetime; ``None`` leaves it to the gateway.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    allow: bool
    reasons: Annotated[list[str], AfterValidator(sorted)]
    hold: bool
    ttl_seconds: int | None = Field(default=None, ge=1, le=3600)
    engine_decision_id: str | None = Field(
        default=None, exclude_if=lambda v: v is None,
        description="the engine's own id for this evaluation (OPA's decision_id, when its decision logs are on)",
    )

    def same_decision(self, other: PolicyResult) -> bool:
        """Equal answers, whichever engine gave them (the engine's own id aside)."""
        return self.model_dump(exclude={"engine_decision_id"}) == other.model_dump(exclude={"engine_decision_id"})


def parse_result(raw: Any) -> PolicyResult:
    """Validate an engine's answer; anything off-contract is a ``PolicyError``."""
    if not isinstance(raw, dict):
        kind = "undefined" if raw is None else type(raw).__name__
        raise PolicyError(f"{DECISION_PATH} is {kind}, not a decision object")
    try:
        return PolicyResult.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "decision"
        raise PolicyError(f"{DECISION_PATH} is off-contract at {where}: {first['msg']}") from exc


class PolicyEngine(Protocol):
    """What the decision pipeline needs from a policy engine.

    ``revision`` identifies the policy modules and data (intents included) that answer; it
    changes whenever they do.  ``evaluate`` raises ``PolicyError`` rather than answer
    anything but a valid :class:`PolicyResult`.  ``reason_notes`` is what the policy's own
    METADATA annotations say of the reasons it gives (see ``_notes``), for reviewers.
    """

    revision: str
    reason_notes: dict[str, ReasonNote]

    async def evaluate(self, input: dict[str, Any], *, decision_id: str | None = None) -> PolicyResult:
        """``decision_id``: the gateway's id for the decision, for the engine's own logs."""
        ...

    def set_intents(self, intents_doc: dict[str, Any]) -> None: ...

    async def reload_if_changed(self) -> bool: ...

    async def aclose(self) -> None: ...
