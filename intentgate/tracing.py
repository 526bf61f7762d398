"""OpenTelemetry tracing: one trace from the agent's request through the decision to the tool
server's own spans.

Off unless ``telemetry.tracing.enabled``: then the OpenTelemetry SDK is not even imported,
:data:`OFF` stands in, its ``span`` is one shared ``nullcontext`` of the API's invalid span
and callers set attributes only on a span that records.  On, the gateway has a
``TracerProvider`` of its own (it installs no global one) and makes a SERVER span for each MCP
request (``tools/call <tool>``, the MCP semantic conventions' names), one for the decision
(``intentgate.decide``) with a span per stage (timed where ``decide`` times its stages), one for
each store commit (``intentgate.store.commit``) and a CLIENT span for the upstream call.

Trace context: an agent's W3C ``traceparent`` / ``tracestate`` arrive in the request's
``params._meta`` (the keys SEP-414 reserves) or, over Streamable HTTP, as HTTP headers
(``_meta`` first). They are parsed by the SDK's ``TraceContextTextMapPropagator``. If it
refuses a value, that value is ignored and the request starts a new trace. What goes upstream
in ``_meta`` is always the context of the gateway's own upstream-call span, never what the
agent sent; ``baggage`` is neither read nor forwarded. Off, the agent's trace context is
dropped before any upstream request (the MCP SDK would otherwise pass it on), so no trace
context reaches an upstream at all.

Attributes are ids, names, outcomes and reason codes: never arguments, results or tokens.
"""

from __future__ import annotations

import hashlib
import os
import sys
from contextlib import AbstractContextManager, nullcontext
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from .config import TracingConfig

__all__ = ["OFF", "TRACEPARENT", "TRACESTATE", "Tracing", "detached", "failed", "remote_parent"]

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_TRACE_KEYS = (TRACEPARENT, TRACESTATE, "baggage")
_PROPAGATOR = TraceContextTextMapPropagator()
_EMPTY = Context()
_NO_SPAN: AbstractContextManager[Span] = nullcontext(INVALID_SPAN)
_MAX_TEXT = 256  # an agent-chosen string (a tool name, a URI) in a span name or attribute


class _Detached:
    """A block that runs with no trace context at all: what it sends carries none."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = otel_context.attach(_EMPTY)

    def __exit__(self, *exc: object) -> None:
        otel_context.detach(self._token)


def detached() -> AbstractContextManager[None]:
    return _Detached()


def remote_parent(untrusted_meta: Any, headers: Any = None) -> Context:
    """The agent's trace context, from the request's ``_meta``, else from its HTTP headers: a
    context holding the agent's span, or an empty one (a new trace) when neither holds a
    ``traceparent`` the W3C propagator accepts."""
    for source in (untrusted_meta, headers):
        if source is None or not hasattr(source, "get"):
            continue
        parent = source.get(TRACEPARENT)
        if not isinstance(parent, str):
            continue
        carrier = {TRACEPARENT: parent}
        state = source.get(TRACESTATE)
        if isinstance(state, str):
            carrier[TRACESTATE] = state
        found = _PROPAGATOR.extract(carrier, context=_EMPTY)
        if trace.get_current_span(found).get_span_context().is_valid:
            return found
    return _EMPTY


def _session_id(headers: Any) -> str | None:
    """An MCP session id as a span attribute: a digest, as the id itself admits to the session."""
    sid = headers.get("mcp-session-id") if headers is not None else None
    return hashlib.sha256(sid.encode()).hexdigest()[:32] if isinstance(sid, str) and sid else None


class Tracing:
    """The gateway's tracer, or (``tracer`` None) nothing at all."""

    def __init__(self, tracer: trace.Tracer | None = None, provider: TracerProvider | None = None) -> None:
        self.tracer = tracer
        self.provider = provider

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    @classmethod
    def open(cls, config: TracingConfig) -> Tracing:
        """The tracing ``config`` asks for; :data:`OFF` when it is not enabled."""
        if not config.enabled:
            return OFF
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

        exporter = _exporter(config)
        release = _release()
        resource = Resource.create({"service.name": config.service_name, "service.version": release})
        # decided on the trace id alone: an agent's sampled flag neither hides its calls nor floods the backend
        provider = TracerProvider(resource=resource, sampler=TraceIdRatioBased(config.sample_ratio))
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider.get_tracer("intentgate", release), provider)

    def shutdown(self) -> None:
        """Export what is left and stop (blocks up to the exporter's timeout)."""
        if self.provider is not None:
            self.provider.shutdown()

    # ----- spans ----------------------------------------------------------------------
    def span(self, name: str, kind: SpanKind = SpanKind.INTERNAL) -> AbstractContextManager[Span]:
        """A span current in its block (off: the API's invalid span, which records nothing).
        Exceptions are not recorded: their text may hold what a trace must not."""
        if self.tracer is None:
            return _NO_SPAN
        return self.tracer.start_as_current_span(name, kind=kind, record_exception=False,
                                                 set_status_on_exception=False)

    def request(self, method: str, ctx: Any, params: Any) -> AbstractContextManager[Any]:
        """The SERVER span of one MCP request from an agent, a child of the agent's span when it
        sent a trace context; off, a block with no trace context (see the module's docstring)."""
        if self.tracer is None:
            return _Detached()
        http = getattr(ctx, "request", None)
        headers = getattr(http, "headers", None)
        target = getattr(params, "name", None)
        target = target[:_MAX_TEXT] if isinstance(target, str) and method in ("tools/call", "prompts/get") else None
        attributes: dict[str, Any] = {"mcp.method.name": method, "network.transport": "pipe" if headers is None else "tcp"}
        if (request_id := getattr(ctx, "request_id", None)) is not None:
            attributes["jsonrpc.request.id"] = str(request_id)
        if isinstance(protocol := getattr(ctx, "protocol_version", None), str):
            attributes["mcp.protocol.version"] = protocol
        if (session := _session_id(headers)) is not None:
            attributes["mcp.session.id"] = session
        if method == "tools/call" and target is not None:
            attributes["gen_ai.operation.name"] = "execute_tool"
            attributes["gen_ai.tool.name"] = target
        elif target is not None:
            attributes["gen_ai.prompt.name"] = target
        if isinstance(uri := getattr(params, "uri", None), str):
            attributes["mcp.resource.uri"] = uri[:_MAX_TEXT]
        return self.tracer.start_as_current_span(
            f"{method} {target}" if target else method, context=remote_parent(getattr(ctx, "meta", None), headers),
            kind=SpanKind.SERVER, attributes=attributes, record_exception=False, set_status_on_exception=False,
        )

    def inject(self, meta: dict[str, Any]) -> dict[str, Any]:
        """``meta`` with the current span's ``traceparent`` (and ``tracestate``) in place of any
        trace keys it had; off, ``meta`` itself."""
        if self.tracer is None:
            return meta
        carrier = {k: v for k, v in meta.items() if k not in _TRACE_KEYS}
        _PROPAGATOR.inject(carrier)
        return carrier


def failed(span: Span, error_type: str, description: str | None = None) -> None:
    """Mark ``span`` failed (``error.type``, status ERROR), if it records."""
    if span.is_recording():
        span.set_attribute("error.type", error_type)
        span.set_status(StatusCode.ERROR, description)


def _exporter(config: TracingConfig) -> SpanExporter | None:
    if config.exporter == "none":
        return None
    if config.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # stderr: stdout carries the protocol under `intentgate stdio`; one JSON object per line, like the log
        return ConsoleSpanExporter(out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + os.linesep)
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ConfigError("telemetry.tracing.exporter otlp needs the OTLP exporter: "
                          "pip install 'intentgate[otlp]'") from exc
    return OTLPSpanExporter(endpoint=config.endpoint, headers=dict(config.headers) or None,
                            timeout=config.timeout_seconds)


def _release() -> str:
    try:
        return version("intentgate")
    except PackageNotFoundError:  # a checkout that was never installed
        return "unknown"


OFF = Tracing()
