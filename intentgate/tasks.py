"""Task origin: who may begin a task for an agent, and the signed task grants hosts hand out.

A task must come from someone a prompt injection cannot reach.  Each intent says who may
begin it (``begin: [issuer]``, ``[agent]`` or both; intents that do not say get
``tasks.begin`` from the config, ``[issuer]`` unless changed):

- a **task issuer** (the user's host application, an orchestrator that never reads untrusted
  content) begins a task *for* an agent: over REST (``POST /v1/tasks`` with its own workload
  token, whose subject matches one of the issuer's ``subjects``), on the CLI
  (``intentgate task begin``, the ``local`` issuer), or by handing the agent a **task grant**;
- the agent itself, with ``intentgate__begin_task``, only where the intent allows ``agent``.

A task grant is a short-lived JWT a task issuer signs (with its own key, configured as
``grant_issuer`` + JWKS, or the gateway's local task-issuer key, ``<data_dir>/keys/
task-issuer``, used by ``intentgate task grant``).  The agent presents it once, to
``intentgate__begin_task`` as ``{"grant": "<jwt>"}``; it begins exactly the task it names,
for exactly the agent it names, and never a second time.  Its shape follows the IETF OAuth
Transaction Tokens draft where the claims fit:

    header  {"typ": "intentgate-task-grant+jwt", "alg": "EdDSA", "kid": ...}
    claims  {"iss": <grant issuer>, "aud": "intentgate", "sub": <agent id>,
             "iat", "nbf", "exp",          at most tasks.grant_max_ttl_seconds after iat
             "jti": <single use>, "txn": <same as jti: the transaction this grant starts>,
             "scope": "intentgate:begin_task",
             "tctx": {"intent": ..., "params": {...}, "reason": ..., "ttl_seconds": <optional>},
             "rctx": {"req_wl": <the workload that asked for the task, when known>}}

``tctx`` is the Txn-Token draft's immutable transaction context (here: what the task is
for), ``rctx.req_wl`` its requesting workload.  Each failure has its own reason code
(``invalid_task_grant``, ``task_grant_expired``, ``task_grant_agent``, ``task_grant_replayed``).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .clock import Clock, SystemClock
from .errors import ConfigError, ReasonCode, TaskError
from .keys import KeySet
from .names import glob_match, identity_glob_problem

__all__ = [
    "GRANT_AUDIENCE",
    "GRANT_SCOPE",
    "LOCAL_GRANT_ISSUER",
    "LOCAL_ISSUER",
    "TASK_GRANT_TYP",
    "BeginMode",
    "TaskGrant",
    "TaskGrantMinter",
    "TaskIssuer",
    "TaskIssuerConfig",
    "TaskIssuers",
    "TasksConfig",
]

BeginMode = Literal["issuer", "agent"]
TASK_GRANT_TYP = "intentgate-task-grant+jwt"
GRANT_SCOPE = "intentgate:begin_task"
GRANT_AUDIENCE = "intentgate"
LOCAL_ISSUER = "local"
LOCAL_GRANT_ISSUER = "intentgate-local"
_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_ASYMMETRIC = {"EdDSA", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
_MAX_GRANT_BYTES = 16384
_MAX_DATE = 2**53


class TaskIssuerConfig(BaseModel):
    """One principal that may begin tasks for agents."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME, description="recorded as the task's issuer")
    subjects: list[str] = Field(
        default_factory=list,
        description="workload identities (globs) that act as this issuer on POST /v1/tasks",
    )
    grant_issuer: str | None = Field(default=None, description="`iss` of task grants this issuer signs itself")
    algorithms: list[str] = Field(default_factory=lambda: ["EdDSA", "ES256"], min_length=1)
    jwks_file: Path | None = Field(default=None, description="public keys of its task grants")
    jwks: dict[str, Any] | None = Field(default=None, description="inline JWKS")
    intents: list[str] = Field(default_factory=lambda: ["*"], description="intent names (globs) it may begin")
    agents: list[str] = Field(default_factory=lambda: ["**"],
                              description="agent ids (globs: * within a /-segment, ** across) it may begin tasks for")
    max_ttl_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600,
                                        description="longest task it may begin (default: the intent's ttl)")

    @model_validator(mode="after")
    def _check(self) -> TaskIssuerConfig:
        if self.name == LOCAL_ISSUER:
            raise ValueError(f"task issuer name {LOCAL_ISSUER!r} is reserved for the gateway's own key")
        if not self.subjects and self.grant_issuer is None:
            raise ValueError(f"task issuer {self.name!r}: give subjects (REST) or grant_issuer (signed grants)")
        for pattern in (*self.subjects, *self.agents):
            if (problem := identity_glob_problem(pattern)) is not None:
                raise ValueError(f"task issuer {self.name!r}, pattern {pattern!r}: {problem}")
        if self.grant_issuer is not None:
            if (self.jwks_file is None) == (self.jwks is None):
                raise ValueError(f"task issuer {self.name!r}: a grant_issuer needs exactly one of jwks_file or jwks")
            if self.grant_issuer == LOCAL_GRANT_ISSUER:
                raise ValueError(f"grant_issuer {LOCAL_GRANT_ISSUER!r} is the gateway's own")
        elif self.jwks_file is not None or self.jwks is not None:
            raise ValueError(f"task issuer {self.name!r}: keys without grant_issuer would never be used")
        bad = [a for a in self.algorithms if a not in _ASYMMETRIC]
        if bad:
            raise ValueError(f"algorithms {bad} are not allowed (asymmetric algorithms only)")
        return self


class TasksConfig(BaseModel):
    """Who begins tasks (see ``intentgate.tasks``)."""

    model_config = ConfigDict(extra="forbid")

    begin: list[BeginMode] = Field(
        default_factory=lambda: ["issuer"], min_length=1,
        description="who may begin an intent whose file has no `begin:` (issuer, agent)",
    )
    issuers: list[TaskIssuerConfig] = Field(default_factory=list)
    local_issuer: bool = Field(
        default=True, description="accept task grants signed with <data_dir>/keys/task-issuer (`intentgate task grant`)"
    )
    grant_max_ttl_seconds: int = Field(default=900, ge=10, le=86400, description="longest lifetime of a task grant")
    leeway_seconds: float = Field(default=30.0, ge=0, le=300)

    @model_validator(mode="after")
    def _unique(self) -> TasksConfig:
        names = [i.name for i in self.issuers]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate task issuer names: {sorted({n for n in names if names.count(n) > 1})}")
        grants = [i.grant_issuer for i in self.issuers if i.grant_issuer]
        if len(set(grants)) != len(grants):
            raise ValueError("two task issuers share one grant_issuer")
        return self


@dataclass(frozen=True)
class TaskIssuer:
    """A verified task issuer (never built from a credential that did not verify)."""

    name: str
    principal: str  # the workload id, the grant's `iss`, or the CLI's user
    via: Literal["rest", "grant", "cli"]
    intents: tuple[str, ...] = ("*",)
    agents: tuple[str, ...] = ("**",)
    max_ttl_seconds: int | None = None

    def may_begin(self, intent: str, agent: str) -> bool:
        return (any(glob_match(p, intent) for p in self.intents)
                and any(glob_match(p, agent) for p in self.agents))

    def document(self) -> dict[str, Any]:
        """What the policy input and the audit log show of the issuer."""
        return {"name": self.name, "id": self.principal, "via": self.via}

    @property
    def label(self) -> str:
        """The task's ``issuer`` column: ``<name>`` or ``<name>:<principal>``."""
        return self.name if self.principal in ("", self.name) else f"{self.name}:{self.principal}"[:512]


class TaskGrant(BaseModel):
    """A task grant that verified (signature, audience, lifetime, subject); not yet used."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    jti: str
    issuer: TaskIssuer
    agent: str
    intent: str
    params: dict[str, Any]
    reason: str
    ttl_seconds: int | None
    expires_at: float


def _grant_error(code: ReasonCode, message: str) -> TaskError:
    return TaskError(message, code=code)


class TaskGrantMinter:
    """Signs task grants with the gateway's local task-issuer key (``intentgate task grant``)."""

    def __init__(self, keyset: KeySet, *, clock: Clock | None = None, audience: str = GRANT_AUDIENCE) -> None:
        self.keyset = keyset
        self.clock = clock or SystemClock()
        self.audience = audience

    def mint(self, *, agent: str, intent: str, params: dict[str, Any], reason: str, ttl_seconds: int = 300,
             task_ttl_seconds: int | None = None, requested_by: str | None = None) -> tuple[str, str]:
        """A signed grant and its ``jti``."""
        if not agent or len(agent) > 512:
            raise ConfigError("agent id must be 1-512 characters")
        now = int(self.clock.now())
        jti = f"tgr_{secrets.token_urlsafe(12)}"
        tctx: dict[str, Any] = {"intent": intent, "params": params, "reason": reason}
        if task_ttl_seconds is not None:
            tctx["ttl_seconds"] = int(task_ttl_seconds)
        claims: dict[str, Any] = {
            "iss": LOCAL_GRANT_ISSUER, "aud": self.audience, "sub": agent, "iat": now, "nbf": now,
            "exp": now + int(ttl_seconds), "jti": jti, "txn": jti, "scope": GRANT_SCOPE, "tctx": tctx,
        }
        if requested_by:
            claims["rctx"] = {"req_wl": requested_by}
        key = self.keyset.current
        token = jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.kid, "typ": TASK_GRANT_TYP})
        return token, jti


class _GrantKeys:
    """One grant issuer's trusted keys and algorithms."""

    def __init__(self, issuer: TaskIssuer, algorithms: list[str], keys: dict[str, Any]) -> None:
        self.issuer = issuer
        self.algorithms = algorithms
        self.keys = keys  # kid -> verification key


class TaskIssuers:
    """The configured task issuers: who a REST caller is, and which task grants verify."""

    def __init__(self, config: TasksConfig, *, local_keys: KeySet | None = None, clock: Clock | None = None,
                 audience: str = GRANT_AUDIENCE) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.audience = audience
        self._by_grant_iss: dict[str, _GrantKeys] = {}
        for cfg in config.issuers:
            if cfg.grant_issuer is None:
                continue
            try:
                doc = cfg.jwks if cfg.jwks is not None else json.loads(
                    Path(cfg.jwks_file).read_text(encoding="utf-8"))  # type: ignore[arg-type]
                keyset = jwt.PyJWKSet.from_dict(doc)
            except (OSError, ValueError, jwt.PyJWTError) as exc:
                raise ConfigError(f"task issuer {cfg.name!r}: cannot load its JWKS: {exc}") from exc
            issuer = TaskIssuer(cfg.name, cfg.grant_issuer, "grant", tuple(cfg.intents), tuple(cfg.agents),
                                cfg.max_ttl_seconds)
            self._by_grant_iss[cfg.grant_issuer] = _GrantKeys(
                issuer, list(cfg.algorithms), {k.key_id: k.key for k in keyset.keys if k.key_id})
        if config.local_issuer and local_keys is not None:
            local = TaskIssuer(LOCAL_ISSUER, LOCAL_GRANT_ISSUER, "grant")
            self._by_grant_iss[LOCAL_GRANT_ISSUER] = _GrantKeys(
                local, ["EdDSA"], {k.kid: k.public for k in local_keys.published()})

    def for_subject(self, subject: str) -> TaskIssuer | None:
        """The issuer a verified workload identity acts as on the REST API, if any."""
        for cfg in self.config.issuers:
            if any(glob_match(p, subject) for p in cfg.subjects):
                return TaskIssuer(cfg.name, subject, "rest", tuple(cfg.intents), tuple(cfg.agents),
                                  cfg.max_ttl_seconds)
        return None

    def verify_grant(self, token: Any, *, agent: str) -> TaskGrant:
        """Check a task grant presented by ``agent``; raises ``TaskError`` with the grant's reason code."""
        bad = ReasonCode.INVALID_TASK_GRANT
        if not isinstance(token, str) or not token or len(token) > _MAX_GRANT_BYTES:
            raise _grant_error(bad, "no task grant, or one too large")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise _grant_error(bad, f"not a JWT: {type(exc).__name__}") from exc
        if header.get("typ") != TASK_GRANT_TYP:
            raise _grant_error(bad, f"typ {str(header.get('typ'))[:40]!r} is not {TASK_GRANT_TYP!r}")
        iss = unverified.get("iss")
        trusted = self._by_grant_iss.get(iss) if isinstance(iss, str) else None
        if trusted is None:
            raise _grant_error(bad, f"untrusted task grant issuer {str(iss)[:80]!r}")
        alg = header.get("alg")
        if alg not in trusted.algorithms:
            raise _grant_error(bad, f"algorithm {str(alg)[:20]!r} not allowed for {iss!r}")
        kid = header.get("kid")
        key = trusted.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise _grant_error(bad, f"unknown key id {str(kid)[:60]!r} for {iss!r}")
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], audience=self.audience, issuer=iss,
                options={"require": ["exp", "iat", "sub", "aud", "iss", "jti"], "verify_exp": False,
                         "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError as exc:
            raise _grant_error(bad, f"task grant rejected: {type(exc).__name__}") from exc
        for name in ("exp", "iat", "nbf"):
            value = claims.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int | float) or not -_MAX_DATE <= value <= _MAX_DATE:
                raise _grant_error(bad, f"claim {name} is not a number of seconds")
        now, leeway = self.clock.now(), self.config.leeway_seconds
        if claims["exp"] - claims["iat"] > self.config.grant_max_ttl_seconds:
            raise _grant_error(bad, f"task grant lives longer than {self.config.grant_max_ttl_seconds}s")
        if now >= claims["exp"] + leeway:
            raise _grant_error(ReasonCode.TASK_GRANT_EXPIRED, "task grant expired")
        if now + leeway < claims.get("nbf", claims["iat"]):
            raise _grant_error(ReasonCode.TASK_GRANT_EXPIRED, "task grant not valid yet")
        if claims.get("scope") != GRANT_SCOPE:
            raise _grant_error(bad, f"scope is not {GRANT_SCOPE!r}")
        jti = claims["jti"]
        if not isinstance(jti, str) or not 8 <= len(jti) <= 64:
            raise _grant_error(bad, "jti must be 8-64 characters")
        if claims["sub"] != agent:
            raise _grant_error(ReasonCode.TASK_GRANT_AGENT, "the task grant names another agent")
        tctx = claims.get("tctx")
        if not isinstance(tctx, dict) or not isinstance(tctx.get("intent"), str) \
                or not isinstance(tctx.get("params", {}), dict) or not isinstance(tctx.get("reason", ""), str):
            raise _grant_error(bad, "tctx must hold intent (string), params (object) and reason (string)")
        ttl = tctx.get("ttl_seconds")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1):
            raise _grant_error(bad, "tctx.ttl_seconds must be a positive integer")
        requested = claims.get("rctx", {}).get("req_wl") if isinstance(claims.get("rctx"), dict) else None
        issuer = trusted.issuer
        if isinstance(requested, str) and requested and issuer.name == LOCAL_ISSUER:
            issuer = TaskIssuer(issuer.name, f"{LOCAL_GRANT_ISSUER}:{requested}"[:512], "grant")
        return TaskGrant(jti=jti, issuer=issuer, agent=agent, intent=tctx["intent"], params=tctx.get("params", {}),
                         reason=tctx.get("reason", ""), ttl_seconds=ttl, expires_at=float(claims["exp"]))
