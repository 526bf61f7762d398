"""Configuration: one YAML file (``intentgate.yaml``), validated at start.

Unknown keys are errors.  ``${VAR}`` (or ``${VAR:-default}``) in any string value is read
from the environment when the file is loaded; a variable that is not set is an error, so
a missing secret never silently becomes an empty string.  Relative paths are relative to
the config file's directory (or to the working directory without a file).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError
from .identity import IssuerConfig
from .names import identity_glob_problem
from .tasks import TasksConfig

__all__ = [
    "AuditConfig",
    "GatewayConfig",
    "IdentityConfig",
    "PolicyConfig",
    "RedeemConfig",
    "RedeemerConfig",
    "ReviewConfig",
    "StoreConfig",
    "TasksConfig",
    "TelemetryConfig",
    "TokenConfig",
    "TracingConfig",
    "UpstreamConfig",
    "expand_env",
    "load_config",
]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PolicyConfig(_Strict):
    engine: Literal["embedded", "opa"] = "embedded"
    url: str | None = Field(default=None, description="OPA server base URL (engine: opa)")
    push_policy: bool = Field(default=True, description="upload opa/ to the OPA server at start")
    timeout_seconds: float = Field(default=2.0, gt=0, le=60)


class StoreConfig(_Strict):
    url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in data_dir")
    timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    pool_size: int = Field(default=8, ge=1, le=128)
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    sqlite_inline: bool = Field(
        default=True, description="run uncontended SQLite transactions on the event loop (no thread hop)"
    )
    migrate: bool = Field(
        default=True,
        description="apply pending schema migrations at start (false: refuse to start on an outdated schema)",
    )


class TokenConfig(_Strict):
    issuer: str = "intentgate"
    ttl_seconds: int = Field(default=30, ge=1, le=3600)
    leeway_seconds: float = Field(default=5.0, ge=0, le=300)


class IdentityConfig(_Strict):
    dev_issuer: bool = Field(
        default=True, description="trust agent tokens from `intentgate agent-token` (turn off in production)"
    )
    issuers: list[IssuerConfig] = Field(default_factory=list, description="SPIFFE / OIDC issuers")
    leeway_seconds: float = Field(default=30.0, ge=0, le=300)


class UpstreamConfig(_Strict):
    """An MCP server the gateway fronts: a stdio command or a Streamable HTTP URL."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,31}$", description="short name; tools appear as <name>__<tool>")
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, description="brokered secrets go here, never to agents")
    cwd: Path | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=30.0, gt=0, le=600, description="each request to the upstream")
    start_timeout_seconds: float = Field(
        default=60.0, gt=0, le=600,
        description="starting the upstream (spawn, handshake, tools/list): a loaded machine starts slowly",
    )
    protocol: Literal["auto", "legacy"] = Field(
        default="auto",
        description="auto: the newest MCP version both sides speak (probing 2026-07-28 first); legacy: the "
                    "initialize handshake only (2025-11-25 and earlier), for servers the probe confuses",
    )
    lean: bool = Field(
        default=True,
        description="HTTP upstreams on 2026-07-28: tools/call as one POST on a kept-alive connection, the result "
                    "validated once; false: every request through the SDK's client (no effect on stdio or legacy)",
    )

    @model_validator(mode="after")
    def _one_transport(self) -> UpstreamConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError(f"upstream {self.name!r}: give exactly one of command or url")
        return self


LOOPBACK_HOSTS = ("127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*")
LOOPBACK_ORIGINS = tuple(f"{scheme}://{host}" for scheme in ("http", "https") for host in LOOPBACK_HOSTS)


class FrontConfig(_Strict):
    max_request_bytes: int = Field(default=1_000_000, ge=1024, le=64_000_000)
    max_argument_bytes: int = Field(default=256_000, ge=256, le=64_000_000)
    max_result_bytes: int = Field(
        default=16_000_000, ge=1024, le=1_000_000_000,
        description="an upstream result larger than this (as JSON) is not passed on: upstream_result_too_large")
    rate_limit_per_second: float | None = Field(
        default=100.0, gt=0, le=1_000_000, description="decisions per second per agent (null: no limit)"
    )
    rate_limit_burst: int = Field(default=200, ge=1, le=1_000_000, description="calls an agent may make at once")
    request_state_ttl_seconds: int = Field(
        default=300, ge=1, le=86_400,
        description="how long a 2026-07-28 agent has to answer a tool's asks (the sealed request_state's lifetime)")
    stateless_http: bool = Field(
        default=False,
        description="serve /mcp without server-side sessions, so replicas behind a load balancer "
        "can take any request (no server-initiated messages outside a request)",
    )
    dns_rebinding_protection: bool = Field(
        default=True, description="refuse /mcp requests whose Host (421) or Origin (403) is not allowed")
    allowed_hosts: list[str] = Field(
        default_factory=lambda: list(LOOPBACK_HOSTS),
        description="Host header values /mcp answers ('name:*' for any port); add the gateway's public name",
    )
    allowed_origins: list[str] = Field(
        default_factory=lambda: list(LOOPBACK_ORIGINS),
        description="Origin header values /mcp answers ('scheme://name:*' for any port); no Origin is allowed",
    )
    page_size: int = Field(
        default=100, ge=1, le=10_000,
        description="items per page of the gateway's tools/list, resources/list, resources/templates/list and "
        "prompts/list (the rest behind nextCursor)")
    max_sessions: int = Field(default=10_000, ge=1, le=1_000_000, description="MCP sessions open in this process")
    max_sessions_per_agent: int = Field(
        default=32, ge=1, le=1_000_000, description="MCP sessions one agent may hold open in this process")
    session_starts_per_minute: float = Field(
        default=60.0, gt=0, le=1_000_000, description="MCP sessions one agent may open per minute (bursts as large)")
    session_idle_seconds: float | None = Field(
        default=1800.0, gt=0, le=7 * 24 * 3600, description="an MCP session with no request for this long is closed")
    sse_events_per_session: int = Field(
        default=256, ge=0, le=100_000,
        description="SSE events each MCP session keeps so its client can resume a stream (Last-Event-ID); 0: none")


class MetricsConfig(_Strict):
    """Who may read ``GET /metrics``, and how often a scrape may reach the database."""

    token_file: Path | None = Field(
        default=None,
        description="a file holding the bearer token scrapers must send (Prometheus' credentials_file); "
        "unset: /metrics needs no credential")
    backlog_max_age_seconds: float = Field(
        default=5.0, ge=0, le=3600,
        description="the review backlog gauges are read from the database at most this often (0: every scrape)")

    def token(self) -> str | None:
        """The scrape token, read now (None when none is configured); a config error if the file
        cannot be read or is empty, so a gateway never serves /metrics open by accident."""
        if self.token_file is None:
            return None
        try:
            text = self.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"metrics.token_file {self.token_file}: {exc.strerror or exc}") from exc
        if not text:
            raise ConfigError(f"metrics.token_file {self.token_file} is empty")
        return text


class RedeemerConfig(_Strict):
    """Tool servers (by workload identity) that may redeem the action tokens of some upstreams."""

    subjects: list[str] = Field(
        min_length=1, description="workload identities (globs: * within a /-segment, ** across) of the tool server")
    audiences: list[str] = Field(
        min_length=1, description="upstream names (globs) whose tokens they may redeem: the tokens' aud")

    @model_validator(mode="after")
    def _check(self) -> RedeemerConfig:
        for pattern in self.subjects:
            if (problem := identity_glob_problem(pattern)) is not None:
                raise ValueError(f"redeem caller pattern {pattern!r}: {problem}")
        return self


class RedeemConfig(_Strict):
    """Who may call ``POST /v1/tokens/redeem``, and how often (``intentgate.redeem``).

    Callers turned away here (no or a bad credential, not listed for the audience, over the
    rate) are counted, not recorded one by one: the door must not let anyone grow the log.
    """

    require_caller: bool = Field(
        default=False,
        description="refuse callers without a workload token (401); false: the token presented is the credential")
    callers: list[RedeemerConfig] = Field(
        default_factory=list,
        description="who may redeem which audiences; a caller that presents a workload token must be listed (403)")
    rate_limit_per_second: float | None = Field(
        default=100.0, gt=0, le=1_000_000,
        description="redemptions per second per caller (its identity, else its address) and process; null: no limit")
    rate_limit_burst: int = Field(default=200, ge=1, le=1_000_000, description="redemptions a caller may make at once")
    log_every_seconds: float = Field(
        default=10.0, ge=0, le=3600, description="at most one log line this often about callers turned away")


class CheckpointSinkConfig(_Strict):
    """Where checkpoints are published outside the database: exactly one of ``file`` or ``url``."""

    file: Path | None = Field(default=None, description="append each checkpoint as a JSON line to this file")
    url: str | None = Field(default=None, pattern=r"^https?://", description="POST each checkpoint's note here")

    @model_validator(mode="after")
    def _one(self) -> CheckpointSinkConfig:
        if (self.file is None) == (self.url is None):
            raise ValueError("a checkpoint sink is exactly one of file or url")
        return self


class CheckpointsConfig(_Strict):
    """Signed checkpoints of the decision log (``intentgate.checkpoints``)."""

    origin: str = Field(default="intentgate/audit", min_length=1, max_length=200, pattern=r"^[^\s+]+$",
                        description="the log's name in its checkpoints (and the audit key's name)")
    every_seconds: float = Field(default=5.0, gt=0, le=3600,
                                 description="seal new decisions and sign a checkpoint this often")
    every_decisions: int = Field(default=1000, ge=1, le=1_000_000,
                                 description="... or as soon as this many decisions wait")
    max_unsealed_seconds: float = Field(
        default=300.0, gt=0, description="`audit verify` reports decisions left unsealed for longer than this")
    sinks: list[CheckpointSinkConfig] = Field(
        default_factory=list, description="where each checkpoint is published outside the database")


class AuditConfig(_Strict):
    arguments: bool = Field(default=True, description="store tool arguments in the decision log")
    checkpoints: CheckpointsConfig = Field(default_factory=CheckpointsConfig)


class ReviewConfig(_Strict):
    """Who may use the reviewer surface (REST under /v1, CLI reads the database directly)."""

    admin_tokens: bool = Field(
        default=True, description="accept reviewer tokens minted by `intentgate admin-token`"
    )
    issuers: list[IssuerConfig] = Field(
        default_factory=list, description="OIDC issuers of reviewer tokens (kind: oidc)"
    )
    role_claim: str = Field(
        default="roles", min_length=1, description="claim holding the reviewer's roles; dots walk into objects"
    )
    role: str = Field(default="intentgate-reviewer", min_length=1, description="role a reviewer token must carry")
    leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    max_grant_seconds: int = Field(default=4 * 3600, ge=60, le=7 * 24 * 3600,
                                   description="longest break-glass grant a reviewer may give")

    @model_validator(mode="after")
    def _oidc_only(self) -> ReviewConfig:
        for cfg in self.issuers:
            if cfg.kind != "oidc":
                raise ValueError(f"review issuer {cfg.issuer!r}: reviewer issuers are kind oidc")
        return self


class TracingConfig(_Strict):
    """OpenTelemetry spans of each request and W3C trace context to upstreams (``intentgate.tracing``)."""

    enabled: bool = Field(
        default=False,
        description="make spans and send upstreams the gateway's trace context (off: no SDK loaded, "
                    "no trace context goes upstream)")
    exporter: Literal["otlp", "console", "none"] = Field(
        default="otlp",
        description="otlp: OTLP/HTTP (the `otlp` extra); console: one JSON line per span on stderr; "
                    "none: spans are made and propagated, not exported")
    endpoint: str | None = Field(
        default=None, pattern=r"^https?://",
        description="OTLP/HTTP traces URL (default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else "
                    "http://localhost:4318/v1/traces)")
    headers: dict[str, str] = Field(default_factory=dict, description="sent with each OTLP export (a collector's "
                                                                      "credential goes here)")
    timeout_seconds: float = Field(default=10.0, gt=0, le=120, description="each OTLP export")
    service_name: str = Field(default="intentgate", min_length=1, max_length=200,
                              description="the spans' service.name")
    sample_ratio: float = Field(
        default=1.0, ge=0, le=1,
        description="share of traces recorded, decided on the trace id (an agent's sampled flag is not obeyed)")


class TelemetryConfig(_Strict):
    tracing: TracingConfig = Field(default_factory=TracingConfig)


class GatewayConfig(_Strict):
    intents_dir: Path = Path("intents")
    policy_dir: Path = Path("opa")
    data_dir: Path = Field(default=Path("var"), description="keys and the default SQLite database")
    environment: str = Field(default="prod", description="seen by policy as input.context.environment")
    mode: Literal["enforce", "shadow"] | None = Field(
        default=None, description="override every intent's mode (e.g. shadow for a trial run)"
    )
    approval_ttl_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    tokens: TokenConfig = Field(default_factory=TokenConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    upstreams: list[UpstreamConfig] = Field(default_factory=list)
    upstream_check: Literal["log", "refuse"] = Field(
        default="log",
        description="at `serve` start every intent step is held against its upstream's tools/list: "
        "log each mismatch as an error, or refuse to start",
    )
    front: FrontConfig = Field(default_factory=FrontConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    redeem: RedeemConfig = Field(default_factory=RedeemConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)

    @model_validator(mode="after")
    def _unique_upstreams(self) -> GatewayConfig:
        names = [u.name for u in self.upstreams]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate upstream names: {dupes}")
        if "intentgate" in names:
            raise ValueError("the upstream name 'intentgate' is reserved for the gateway's own tools")
        return self

    @property
    def database_url(self) -> str:
        return self.store.url or f"sqlite:///{self.data_dir / 'intentgate.db'}"

    @property
    def action_keys_dir(self) -> Path:
        return self.data_dir / "keys" / "action"

    @property
    def agent_issuer_keys_dir(self) -> Path:
        return self.data_dir / "keys" / "agent-issuer"

    @property
    def admin_keys_dir(self) -> Path:
        return self.data_dir / "keys" / "admin"

    @property
    def task_issuer_keys_dir(self) -> Path:
        return self.data_dir / "keys" / "task-issuer"

    @property
    def audit_keys_dir(self) -> Path:
        return self.data_dir / "keys" / "audit"

    def resolved(self, base: Path) -> GatewayConfig:
        """Copy with relative paths made relative to ``base``."""

        def fix(p: Path) -> Path:
            return p if p.is_absolute() else (base / p)

        upstreams = [
            u.model_copy(update={"cwd": fix(u.cwd) if u.cwd is not None else None}) for u in self.upstreams
        ]
        cps = self.audit.checkpoints
        sinks = [k.model_copy(update={"file": fix(k.file) if k.file is not None else None}) for k in cps.sinks]
        audit = self.audit.model_copy(update={"checkpoints": cps.model_copy(update={"sinks": sinks})})
        return self.model_copy(
            update={
                "intents_dir": fix(self.intents_dir),
                "policy_dir": fix(self.policy_dir),
                "data_dir": fix(self.data_dir),
                "upstreams": upstreams,
                "audit": audit,
                "metrics": self.metrics.model_copy(update={
                    "token_file": fix(self.metrics.token_file) if self.metrics.token_file is not None else None}),
            }
        )


def expand_env(value: Any, env: dict[str, str] | None = None, where: str = "") -> Any:
    """Replace ``${VAR}``/``${VAR:-default}`` in every string of a parsed YAML tree."""
    env = os.environ if env is None else env  # type: ignore[assignment]
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{where or 'config'}: environment variable {name} is not set")

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, env, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def load_config(path: Path | None = None, **overrides: Any) -> GatewayConfig:
    """Load ``path`` (or defaults when None), apply non-None overrides, resolve paths."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}".replace("\n", " ")) from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the config file must hold one YAML mapping")
        raw = expand_env(loaded or {})
        base = path.resolve().parent
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{path or 'config'}: " + "; ".join(lines)) from exc
    return config.resolved(base)
