"""Intent fixtures: example call sequences with the outcome each call must get, run offline.

A fixture file sits beside the intent it tests, named ``<anything>.test.yaml`` (the intent
loader skips these)::

    intent: refund-order
    agent: spiffe://example.org/agent/support-1     # default for every case
    at: "2027-01-04T10:00:00Z"                      # the clock (policy sees it), default now; a case may set its own
    cases:
      - name: the whole refund
        params: {ticket_id: TCK-1, order_id: ORD-7}
        calls:
          - {step: read_ticket, arguments: {ticket_id: TCK-1}}          # expect: allow (default)
          - step: lookup
            arguments: {order_id: ORD-7}
            result: {order_id: ORD-7, currency: EUR}                      # what the upstream returns
          - {step: refund, arguments: {order_id: ORD-8, amount: 5, currency: EUR},
             expect: deny, reasons: [binding_mismatch]}

Each case begins its own task (as a task issuer, or as the agent where the intent is
``begin: [agent]`` only; ``begin: {expect: deny, reasons: [...]}`` tests the refusal), then
sends its calls, in order, through the gateway's own decision core: the workflow code, the
Rego policy (embedded engine), a throwaway SQLite database, real tokens.  An allowed call's
``result`` (structured content, or a string: text content) is kept for bindings exactly as
the MCP front keeps an upstream's.  Nothing is contacted.

``reasons`` lists every reason the call must get, in any order; an entry without ``:``
matches the code of a reason with any detail (``argument_constraint`` matches
``argument_constraint:amount``).  A call to a step the intent does not have is a fixture
error, unless the call expects ``deny`` (testing ``unknown_step``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .bindings import keep_values, result_document
from .clock import FrozenClock
from .config import GatewayConfig, PolicyConfig
from .decide import CallRequest
from .errors import GatewayError, TaskError
from .identity import AgentIdentity
from .intents import FIXTURE_SUFFIXES
from .store import KeptValues
from .tasks import TaskIssuer

__all__ = ["CaseResult", "FixtureError", "FixtureFile", "find_fixtures", "load_fixture", "run_fixtures"]

Expected = Literal["allow", "deny", "hold", "would_deny"]
FIXTURE_ISSUER = TaskIssuer("intent-test", "intentgate:intent-test", "cli")


class FixtureError(Exception):
    """A fixture that cannot be run as written (not a failing expectation)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BeginExpectation(_Strict):
    expect: Literal["allow", "deny"] = "allow"
    reasons: list[str] | None = None
    by: Literal["issuer", "agent"] | None = Field(
        default=None, description="who begins the task (default: an issuer where the intent allows it)")


class FixtureCall(_Strict):
    step: str
    tool: str | None = Field(default=None, description="upstream.tool (default: the step's)")
    arguments: dict[str, Any] = Field(default_factory=dict)
    expect: Expected = "allow"
    reasons: list[str] | None = None
    result: Any = Field(default=None, description="the upstream's result: structured content, or a string (text)")
    agent: str | None = None
    after_seconds: float = Field(default=1.0, ge=0, le=366 * 86400, description="clock advance before the call")


class FixtureCase(_Strict):
    name: str = Field(min_length=1)
    agent: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    reason: str = "intent fixture"
    at: datetime | None = Field(default=None, description="the clock when the case begins (default: the file's)")
    begin: BeginExpectation = Field(default_factory=BeginExpectation)
    calls: list[FixtureCall] = Field(default_factory=list)


class FixtureFile(_Strict):
    intent: str
    agent: str | None = None
    at: datetime | None = None
    cases: list[FixtureCase] = Field(min_length=1)


@dataclass
class CaseResult:
    file: str
    intent: str
    case: str
    calls: int
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def find_fixtures(paths: list[Path]) -> list[Path]:
    """Fixture files: the given files, and every ``*.test.yaml`` under the given directories."""
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(FIXTURE_SUFFIXES))
        elif p.is_file():
            found.append(p)
        else:
            raise FixtureError(f"{p}: no such file or directory")
    return found


def load_fixture(path: Path) -> FixtureFile:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, RecursionError) as exc:
        raise FixtureError(f"{path}: cannot read: {exc}".replace("\n", " ")) from exc
    try:
        return FixtureFile.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(x) for x in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()]
        raise FixtureError(f"{path}: " + "; ".join(lines)) from exc


def reasons_match(expected: list[str], actual: list[str]) -> bool:
    """Every expected reason matches a distinct actual one and none is left over."""
    left = list(actual)
    for want in expected:
        hit = next((a for a in left if a == want or (":" not in want and a.split(":", 1)[0] == want)), None)
        if hit is None:
            return False
        left.remove(hit)
    return not left


def _result_texts(result: Any) -> tuple[Any, list[str]]:
    if isinstance(result, str):
        return None, [result]
    return result, [json.dumps(result)] if result is not None else []


def _check(fixture: FixtureFile, registry: Any, path: Path) -> None:
    intent = registry.get(fixture.intent)
    if intent is None:
        raise FixtureError(f"{path}: intent {fixture.intent!r} is not loaded "
                           f"(loaded: {', '.join(i.name for i in registry) or 'none'})")
    for n, case in enumerate(fixture.cases, 1):
        if not (case.agent or fixture.agent):
            raise FixtureError(f"{path}: case {n} ({case.name!r}): no agent (set `agent:` on the file or the case)")
        for m, call in enumerate(case.calls, 1):
            if call.step not in intent.steps and call.expect != "deny":
                raise FixtureError(
                    f"{path}: case {n} ({case.name!r}), call {m}: intent {intent.name!r} has no step {call.step!r} "
                    f"(its steps: {', '.join(intent.steps)}); a call to an unknown step can only expect deny")


async def _run_case(rt: Any, clock: FrozenClock, fixture: FixtureFile, case: FixtureCase, path: Path) -> CaseResult:
    intent = rt.decider.intents.get(fixture.intent)
    agent = AgentIdentity(id=case.agent or fixture.agent or "")
    out = CaseResult(str(path), fixture.intent, case.name, len(case.calls))
    if case.at is not None:
        clock.set(case.at.timestamp())
    modes = rt.decider.intents.begin_modes(intent)
    by = case.begin.by or ("issuer" if "issuer" in modes else "agent")
    try:
        started = await rt.decider.begin_task(agent, fixture.intent, case.params, case.reason,
                                              issuer=FIXTURE_ISSUER if by == "issuer" else None)
    except TaskError as exc:
        got = [exc.code.value]
        if case.begin.expect != "deny":
            out.failures.append(f"begin: expected allow, got deny {got} ({exc.message})")
        elif case.begin.reasons is not None and not reasons_match(case.begin.reasons, got):
            out.failures.append(f"begin: expected reasons {case.begin.reasons}, got {got}")
        return out
    if case.begin.expect == "deny":
        out.failures.append("begin: expected deny, got allow")
        return out
    for m, call in enumerate(case.calls, 1):
        clock.advance(call.after_seconds)
        step = intent.steps.get(call.step)
        upstream, _, tool = (call.tool or (step.tool if step else "unknown.unknown")).partition(".")
        verdict = await rt.decider.decide(CallRequest(
            agent=AgentIdentity(id=call.agent) if call.agent else agent, task_id=started.task_id, step=call.step,
            upstream=upstream, tool=tool, untrusted_arguments=call.arguments, burn_on_commit=True,
        ))
        where = f"call {m} ({call.step})"
        if verdict.outcome != call.expect:
            out.failures.append(f"{where}: expected {call.expect}, got {verdict.outcome} {verdict.reasons}"
                                + (f": {verdict.explanation}" if verdict.explanation else ""))
        elif call.reasons is not None and not reasons_match(call.reasons, verdict.reasons):
            out.failures.append(f"{where}: expected reasons {call.reasons}, got {verdict.reasons}")
        if verdict.forward:
            kept = None
            if verdict.keep:
                structured, texts = _result_texts(call.result)
                values, dropped = keep_values(result_document(structured, texts), verdict.keep)
                kept = KeptValues(started.task_id, call.step, values, dropped)
            await rt.store.record_outcome(verdict.decision_id, at=clock.now(), status="ok", latency_ms=0.0,
                                          kept=kept)
    return out


async def run_fixtures(config: GatewayConfig, paths: list[Path],
                       on_case: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    """Run every case of every fixture in ``paths`` against ``config``'s intents and policy
    (embedded engine, a throwaway database); ``on_case`` sees each result as it comes."""
    from .runtime import Runtime

    fixtures = [(p, load_fixture(p)) for p in paths]
    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="intentgate-intent-test-") as tmp:
        for n, (path, fixture) in enumerate(fixtures):
            offline = config.model_copy(update={  # a database of its own for every file: no budgets carried over
                "data_dir": Path(tmp), "store": config.store.model_copy(update={"url": f"sqlite:///{tmp}/{n}.db"}),
                "policy": PolicyConfig(engine="embedded"),
                "front": config.front.model_copy(update={"rate_limit_per_second": None}),
                "mode": None,
            })
            clock = FrozenClock(fixture.at.timestamp() if fixture.at else None)
            try:
                rt = await Runtime.open(offline, clock=clock)
            except GatewayError as exc:
                raise FixtureError(f"{path}: {exc.message}") from exc
            try:
                _check(fixture, rt.decider.intents, path)
                for case in fixture.cases:
                    result = await _run_case(rt, clock, fixture, case, path)
                    results.append(result)
                    if on_case:
                        on_case(result)
            finally:
                await rt.aclose()
    return results
