"""The HTTP front: one FastAPI app on one port.

- ``/mcp``: the MCP Streamable HTTP endpoint (the SDK's session manager), behind a bearer
  check: no valid workload token, no MCP (401, one opaque answer);
- ``POST /v1/decide``: the same pipeline for enforcement points that are not MCP clients
  (an ext-authz hook, say); the answer carries the action token on allow;
- ``POST /v1/tasks``, ``POST /v1/tasks/{id}/end``: task issuers begin tasks for agents (and end
  them), with their own workload token (``intentgate.tasks``);
- ``POST /v1/tokens/redeem``: tool servers burn an action token in the gateway's database
  (``intentgate.redeem``): honoured once across every replica; the caller's own workload token
  as configured in ``redeem``, each caller rate limited;
- ``/.well-known/jwks.json``: the public keys that verify action tokens;
- ``/.well-known/intentgate-audit-keys``: the public keys that verify audit checkpoints;
- ``/healthz``: liveness plus a database round trip;
- ``/v1/decisions``, ``/v1/decisions/{id}``, ``/v1/audit/export``: the reviewer API
  (``intentgate.review``), behind a reviewer credential;
- ``/ui``: the reviewer web UI (``intentgate.ui``), behind a reviewer session cookie.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .catalogue import Catalogue, check_against
from .config import GatewayConfig
from .decide import CallRequest, Verdict, new_id
from .errors import ConfigError, GatewayError, ReasonCode
from .front import Front
from .identity import AgentIdentity, IdentityError
from .intents import IntentRegistry
from .metrics import CONTENT_TYPE_LATEST
from .redeem import RedeemDoor, Redeemed, TurnedAway, redeem
from .review import ReviewService
from .review.api import router as review_router
from .runtime import Runtime
from .bodies import JsonBodyPolicy, validation_error
from .sessions import SessionGuard, SessionManager, authenticated_user
from .store import DecisionRecord
from .tasks import TaskIssuer
from .ui import router as ui_router
from .upstreams import UpstreamPool

__all__ = ["create_app"]

log = logging.getLogger("intentgate.web")

_NOT_JSON = {"description": "the request body is not JSON"}
_UNAUTHENTICATED = {"error": ReasonCode.UNAUTHENTICATED.value, "message": "a valid workload token is required"}


class DecideRequest(BaseModel):
    """A call to decide on, from an enforcement point that is not an MCP client."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(max_length=64)
    step: str = Field(max_length=64)
    upstream: str = Field(max_length=64)
    tool: str = Field(max_length=128)
    arguments: dict[str, Any] = Field(default_factory=dict)


class DecideResponse(BaseModel):
    decision_id: str
    outcome: str
    reasons: list[str]
    explanation: str
    allowed_next: list[str]
    approval_id: str | None = None
    token: str | None = Field(default=None, description="the action token, on allow")
    token_expires_at: int | None = None


class TaskBeginRequest(BaseModel):
    """A task issuer begins a task for an agent."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1, max_length=512, description="the agent the task is for (its workload id)")
    intent: str = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    reason: str = Field(min_length=1, max_length=2000, description="why the task is needed (free text)")
    ttl_seconds: int | None = Field(default=None, ge=1, description="shorter than the intent's ttl, if given")


class TaskBeginResponse(BaseModel):
    task: str
    agent: str
    intent: str
    version: str
    issuer: str | None
    expires_at: float
    start_steps: list[str]
    decision_id: str


class TaskEndResponse(BaseModel):
    task: str
    status: str
    revoked_tokens: int
    decision_id: str


class TaskRefusal(BaseModel):
    error: str = Field(description="a reason code: issuer_not_permitted, unknown_intent, invalid_params, ...")
    message: str
    decision_id: str | None = Field(default=None, description="the refusal as recorded in the decision log")


class _BodyInvalid(BaseModel):
    """FastAPI's answer to a request body that does not fit its model."""

    detail: list[dict[str, Any]]


# HTTP status of a refused task begin, by reason code (anything else: 403)
_TASK_STATUS = {
    ReasonCode.UNKNOWN_INTENT: 404, ReasonCode.UNKNOWN_TASK: 404, ReasonCode.INVALID_PARAMS: 422,
    ReasonCode.MALFORMED_REQUEST: 422, ReasonCode.RATE_LIMITED: 429, ReasonCode.TASK_ENDED: 409,
    ReasonCode.STORE_ERROR: 503, ReasonCode.POLICY_ERROR: 503, ReasonCode.INTERNAL_ERROR: 503,
}


class RedeemRequest(BaseModel):
    """A tool server presenting the action token that came with a call it received."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(max_length=8192)
    audience: str = Field(max_length=64, description="the tool server's upstream name (the token's aud)")
    tool: str = Field(max_length=256, description="the tool called, as intents name it: upstream.tool")
    arguments: dict[str, Any] = Field(default_factory=dict, description="the arguments received, as received")


class RedeemResponse(BaseModel):
    jti: str
    agent: str
    task: str
    intent: str
    step: str
    tool: str
    expires_at: int


class RedeemRefusal(BaseModel):
    error: str = Field(description="token_replayed, token_revoked, token_expired, ... or store_error; "
                                   "unauthenticated, redeemer_not_permitted or rate_limited for a caller turned away")
    message: str
    decision_id: str | None = Field(
        default=None, description="the refusal as recorded in the decision log (none for a caller turned away: "
                                  "those are counted, not recorded)")


def _bearer(headers: Any) -> str | None:
    value = headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class _McpEndpoint:
    """ASGI app for /mcp: Host and Origin checked (DNS rebinding), the agent authenticated,
    its sessions held to it, then the SDK's session manager."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.app.state
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refused = await state.transport_security.validate_request(Request(scope), is_post=False)
        if refused is not None:  # before the token: a rebinding page has none to offer anyway
            log.warning("mcp request refused: %s (host %r, origin %r)", refused.body.decode()[:40],
                        headers.get("host", "")[:200], headers.get("origin", "")[:200])
            await refused(scope, receive, send)
            return
        try:
            identity = state.verify(_bearer(headers))
        except IdentityError as exc:
            log.info("mcp request refused: %s", exc.message)
            response = JSONResponse(_UNAUTHENTICATED, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["intentgate_agent"] = identity
        scope["user"] = authenticated_user(identity)  # the SDK binds each session to this principal
        guard: SessionGuard | None = state.sessions
        session_id = headers.get("mcp-session-id")
        if guard is not None and session_id is not None:
            owner = guard.owner(session_id)
            if owner is not None and owner != identity.id:  # the SDK answers 404, as for no such session
                await _record_session_refusal(state.runtime, identity, ReasonCode.SESSION_NOT_OWNED,
                                              f"session {session_id[:64]} is another agent's")
        elif guard is not None and scope.get("method") == "POST" and _opens_session(headers):
            why = guard.admit(identity.id)
            if why is not None:
                code, detail = why
                verdict = await _record_session_refusal(state.runtime, identity, code, detail)
                await JSONResponse(
                    {"jsonrpc": "2.0", "id": None, "error": {
                        "code": -32000, "message": f"{code.value}: {detail}",
                        "data": {"reasons": verdict.reasons, "decision_id": verdict.decision_id}}},
                    status_code=429, headers={"Retry-After": "60"},
                )(scope, receive, send)
                return

            async def send_noting_session(message: Any) -> None:
                if message["type"] == "http.response.start":
                    for key, value in message.get("headers", []):
                        if key.lower() == b"mcp-session-id":
                            guard.opened(value.decode("latin-1"), identity.id)
                await send(message)

            await state.session_manager.handle_request(scope, receive, send_noting_session)
            return
        await state.session_manager.handle_request(scope, receive, send)


def _announce(base: str, live: int, upstreams: int, intents: int) -> None:
    """The one line an operator waits for, whatever the log level: where everything is."""
    serving = logging.getLogger("intentgate.serve")
    serving.setLevel(logging.INFO)
    serving.info("listening on %s: MCP at %s/mcp, reviewer UI at %s/ui, API docs at %s/docs; %d of %d upstreams "
                 "up, %d intents", base, base, base, base, live, upstreams, intents,
                 extra={"url": base, "upstreams_up": live, "upstreams": upstreams, "intents": intents})


def _opens_session(headers: dict[str, str]) -> bool:
    """A request without a session id that the SDK would open a session for: the 2025
    handshake (no protocol-version header, or a handshake-era one), not the sessionless 2026 protocol."""
    version = headers.get("mcp-protocol-version")
    return version is None or version in HANDSHAKE_PROTOCOL_VERSIONS


async def _record_session_refusal(rt: Runtime, agent: AgentIdentity, code: ReasonCode, detail: str) -> Verdict:
    record = DecisionRecord(id=new_id("dec"), at=rt.clock.now(), kind="mcp/session", agent=agent.id,
                            outcome="deny", reasons=[])
    log.warning("mcp session refused: %s: %s", code.value, detail, extra={"decision_id": record.id})
    return await rt.decider.record_failure(record, code, detail)


def check_upstreams(config: GatewayConfig, intents: IntentRegistry, catalogue: Catalogue) -> None:
    """Every step held against what its upstream listed: each mismatch an error in the log, and
    with ``upstream_check: refuse`` no start at all (a step that names a tool no upstream has
    would fail every call at run time)."""
    problems = check_against(intents, catalogue)
    for p in problems:
        log.error("intent does not match its upstream: %s", p)
    if problems and config.upstream_check == "refuse":
        raise ConfigError(
            f"{len(problems)} intent step problem(s) against the upstreams (upstream_check: refuse), "
            f"the first: {problems[0]}"
        )


def create_app(config: GatewayConfig) -> FastAPI:
    """The gateway as an ASGI app; everything starts in the lifespan."""
    scrape_token = config.metrics.token()  # read now: a token file that cannot be read stops the start

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = await Runtime.open(config)
        pool = UpstreamPool(config.upstreams)
        review: ReviewService | None = None
        try:
            review = ReviewService.open(
                config, lambda: rt.decider.intents, agents=rt.identity_verifier(), clock=rt.clock
            )
            review.on_grants_changed = rt.store.grants.changed  # a new grant works at once here
            app.state.review = review
            failures = await pool.start()
            for name, message in failures.items():
                log.error("upstream %s is not available (it is retried on use): %s", name, message)
            check_upstreams(config, rt.decider.intents, Catalogue.of(pool, failures))
            verifier = rt.identity_verifier()

            async def identify(ctx: Any) -> AgentIdentity:
                request = getattr(ctx, "request", None)
                agent = request.scope.get("state", {}).get("intentgate_agent") if request is not None else None
                if not isinstance(agent, AgentIdentity):
                    raise IdentityError("no authenticated agent on this request")
                return agent

            front = Front(rt, pool, identify)
            security = TransportSecuritySettings(
                enable_dns_rebinding_protection=config.front.dns_rebinding_protection,
                allowed_hosts=config.front.allowed_hosts, allowed_origins=config.front.allowed_origins,
            )
            manager = SessionManager(
                app=front.server,
                max_events=config.front.sse_events_per_session,
                max_request_body_size=config.front.max_request_bytes,
                stateless=config.front.stateless_http,
                security_settings=security,
                session_idle_timeout=config.front.session_idle_seconds,
                max_sessions=config.front.max_sessions,
            )
            app.state.transport_security = TransportSecurityMiddleware(security)
            live = getattr(manager, "_server_instances", None)  # the SDK's table of open sessions
            app.state.sessions = None if config.front.stateless_http else SessionGuard(
                max_per_agent=config.front.max_sessions_per_agent,
                starts_per_minute=config.front.session_starts_per_minute, clock=rt.clock,
                live=(lambda sid: sid in live) if isinstance(live, dict) else None,
            )
            app.state.runtime, app.state.front = rt, front
            app.state.redeem_door = RedeemDoor(config.redeem, verifier.verify, clock=rt.clock, metrics=rt.metrics)
            app.state.verify, app.state.session_manager = verifier.verify, manager
            sweeper = asyncio.create_task(rt.run_background(), name="background")
            try:
                async with manager.run():
                    if (where := getattr(app.state, "listen", None)) is not None:
                        _announce(where, len(pool.upstreams) - len(failures), len(pool.upstreams),
                                  len(rt.decider.intents))
                    yield
            finally:
                sweeper.cancel()
        finally:
            await pool.aclose()
            if review is not None:
                review.close()
            await rt.aclose()

    app = FastAPIOffline(  # /docs and /redoc from packaged assets: they work with no network
        title="IntentGate",
        version="0.1.0",
        description="MCP gateway: intent-scoped, policy-checked, single-use action tokens for AI agents.",
        lifespan=lifespan,
        responses={400: {"description": "the JSON body holds what the log cannot store (NaN, Infinity, an integer "
                                        "beyond 2**53): malformed_request"}},
    )
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_middleware(JsonBodyPolicy, max_bytes=config.front.max_request_bytes)

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        rt: Runtime = request.app.state.runtime
        try:
            await rt.store.get_task("tsk_healthcheck")
        except GatewayError:
            return JSONResponse({"status": "degraded", "database": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok", "policy_revision": rt.policy.revision,
                             "intents_revision": rt.intents.revision})

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics of this gateway process, and what awaits reviewers in its database (no
        arguments in labels; agent ids only on the sessions gauge, at most ``SESSION_AGENTS`` of them)."""
        rt: Runtime = request.app.state.runtime
        if scrape_token is not None and not hmac.compare_digest((_bearer(request.headers) or "").encode(),
                                                                scrape_token.encode()):
            return Response("a bearer token is required (metrics.token_file)\n", status_code=401,
                            media_type="text/plain", headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        body = await rt.metrics.scrape(rt.store, rt.clock.now(), getattr(request.app.state, "sessions", None),
                                       max_age=config.metrics.backlog_max_age_seconds)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/.well-known/jwks.json")
    async def jwks(request: Request) -> dict[str, Any]:
        return request.app.state.runtime.keys.jwks()

    @app.get("/.well-known/intentgate-audit-keys")
    async def audit_keys(request: Request) -> dict[str, Any]:
        """The audit log's origin and the public keys that verify its checkpoints (signed-note
        verifier keys and the same as a JWKS), retired ones included."""
        return request.app.state.runtime.sealer.signer.published()

    @app.post("/v1/decide", response_model=DecideResponse,
              responses={400: _NOT_JSON, 401: {"description": "no valid workload token"}})
    async def decide(body: DecideRequest, request: Request) -> Any:
        try:
            agent = request.app.state.verify(_bearer(request.headers))
        except IdentityError:
            return JSONResponse(_UNAUTHENTICATED, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        rt: Runtime = request.app.state.runtime
        verdict = await rt.decider.decide(
            CallRequest(agent=agent, task_id=body.task, step=body.step, upstream=body.upstream, tool=body.tool,
                        untrusted_arguments=body.arguments)
        )
        return DecideResponse(
            decision_id=verdict.decision_id, outcome=verdict.outcome, reasons=verdict.reasons,
            explanation=verdict.explanation, allowed_next=verdict.allowed_next, approval_id=verdict.approval_id,
            token=verdict.token.token if verdict.token else None,
            token_expires_at=verdict.token.expires_at if verdict.token else None,
        )

    @app.post(
        "/v1/tokens/redeem", response_model=RedeemResponse,
        responses={400: _NOT_JSON,
                   401: {"model": RedeemRefusal, "description": "no valid workload token of the caller"},
                   403: {"model": RedeemRefusal, "description": "not a valid token for this call, or the caller may "
                                                                "not redeem this audience's tokens"},
                   409: {"model": RedeemRefusal, "description": "already used or revoked"},
                   429: {"model": RedeemRefusal, "description": "the caller redeems too often (Retry-After)"},
                   503: {"model": RedeemRefusal, "description": "the database is unavailable: not honoured"}},
    )
    async def redeem_token(body: RedeemRequest, request: Request) -> Any:
        """Verify an action token for the call a tool server received and burn it, once.  The tool
        server authenticates with its own workload token as ``redeem`` in the config says."""
        rt: Runtime = request.app.state.runtime
        door: RedeemDoor = request.app.state.redeem_door
        address = request.client.host if request.client is not None else "unknown"
        admitted = door.admit(_bearer(request.headers), address, body.audience)
        if isinstance(admitted, TurnedAway):
            headers = ({"WWW-Authenticate": "Bearer"} if admitted.status == 401
                       else {"Retry-After": str(admitted.retry_after)} if admitted.retry_after is not None else None)
            turned = RedeemRefusal(error=admitted.code.value, message=admitted.message)
            return JSONResponse(turned.model_dump(), status_code=admitted.status, headers=headers)
        result = await redeem(verifier=rt.verifier, store=rt.store, decider=rt.decider, token=body.token,
                              audience=body.audience, tool=body.tool, arguments=body.arguments)
        if isinstance(result, Redeemed):
            c = result.claims
            return RedeemResponse(jti=c.jti, agent=c.sub, task=c.detail.task, intent=c.detail.intent,
                                  step=c.detail.step, tool=c.detail.tool, expires_at=int(c.exp))
        status = (409 if result.code in (ReasonCode.TOKEN_REPLAYED, ReasonCode.TOKEN_REVOKED)
                  else 503 if result.code in (ReasonCode.STORE_ERROR, ReasonCode.INTERNAL_ERROR) else 403)
        refusal = RedeemRefusal(error=result.code.value, message=result.message, decision_id=result.decision_id)
        return JSONResponse(refusal.model_dump(), status_code=status)

    task_refusals: dict[int | str, dict[str, Any]] = {
        401: {"description": "no valid workload token"},
        403: {"model": TaskRefusal, "description": "not a task issuer, or not for this intent or agent"},
        404: {"model": TaskRefusal}, 409: {"model": TaskRefusal},
        422: {"model": TaskRefusal | _BodyInvalid,
              "description": "the task's parameters do not fit the intent, or the request body does not fit"},
        429: {"model": TaskRefusal}, 503: {"model": TaskRefusal}, 400: _NOT_JSON}

    def _refused(exc: GatewayError) -> JSONResponse:
        body = TaskRefusal(error=exc.code.value, message=exc.message, decision_id=exc.decision_id)
        return JSONResponse(body.model_dump(), status_code=_TASK_STATUS.get(exc.code, 403))

    async def _issuer(request: Request, agent: str, intent: str | None) -> TaskIssuer | JSONResponse:
        """The task issuer the bearer token proves, or the response refusing the request."""
        try:
            caller = request.app.state.verify(_bearer(request.headers))
        except IdentityError:
            return JSONResponse(_UNAUTHENTICATED, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        rt: Runtime = request.app.state.runtime
        issuer = rt.task_issuers.for_subject(caller.id)
        if issuer is None:
            log.info("task request refused: %s is no task issuer", caller.id[:200])
            return _refused(await rt.decider.refuse_begin(
                AgentIdentity(id=agent[:512] or "-"), ReasonCode.ISSUER_NOT_PERMITTED,
                "the caller is not a task issuer", intent=intent))
        return issuer

    @app.post("/v1/tasks", response_model=TaskBeginResponse, status_code=201, responses=task_refusals)
    async def begin_task(body: TaskBeginRequest, request: Request) -> Any:
        """A task issuer (a workload whose identity matches ``tasks.issuers[].subjects``) begins a
        task for an agent; the agent then calls tools with the task id it is given."""
        issuer = await _issuer(request, body.agent, body.intent)
        if isinstance(issuer, JSONResponse):
            return issuer
        rt: Runtime = request.app.state.runtime
        try:
            started = await rt.decider.begin_task(AgentIdentity(id=body.agent), body.intent, body.params,
                                                  body.reason, issuer=issuer, ttl_seconds=body.ttl_seconds)
        except GatewayError as exc:
            return _refused(exc)
        return TaskBeginResponse(task=started.task_id, agent=started.agent, intent=started.intent,
                                 version=started.intent_version, issuer=started.issuer,
                                 expires_at=started.expires_at, start_steps=started.start_steps,
                                 decision_id=started.decision_id)

    @app.post("/v1/tasks/{task_id}/end", response_model=TaskEndResponse, responses=task_refusals)
    async def end_task(task_id: Annotated[str, Path(min_length=1, max_length=64)], request: Request) -> Any:
        """The task issuer that began a task ends it: every token it was issued and not used is revoked."""
        rt: Runtime = request.app.state.runtime
        task = await rt.store.get_task(task_id)
        issuer = await _issuer(request, task.agent if task else "-", task.intent if task else None)
        if isinstance(issuer, JSONResponse):
            return issuer
        try:
            ended = await rt.decider.end_task(AgentIdentity(id=task.agent if task else "-"), task_id, issuer=issuer)
        except GatewayError as exc:
            return _refused(exc)
        return TaskEndResponse(task=ended.task_id, status=ended.status, revoked_tokens=ended.revoked_tokens,
                               decision_id=ended.decision_id)

    app.include_router(review_router)
    app.include_router(ui_router)
    # a Route, not a Mount: the endpoint is exactly /mcp, no redirect to /mcp/
    app.router.routes.append(Route("/mcp", endpoint=_McpEndpoint(app), methods=["GET", "POST", "DELETE"]))
    return app
