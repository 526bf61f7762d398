"""What every example agent shares: connecting to the gateway, calling tools, the transcript.

An agent connects over Streamable HTTP with its workload token as ``Authorization: Bearer``
(:func:`connect`), or over stdio by starting ``intentgate stdio --config CONFIG`` with the
token in ``INTENTGATE_AGENT_TOKEN``.  Its task comes from someone it trusts and an injection
cannot reach: a task issuer (the support queue, ``orchestrator``) begins it and hands over the
task id (:meth:`Agent.take`), or the host hands over a signed task grant that the agent
presents once (:meth:`Agent.begin_with_grant`); only read-only intents (``lookup-order``) may
be begun by the agent itself (:meth:`Agent.begin`).  :class:`Agent` wraps the MCP client: it
takes, begins and ends tasks, calls tools with the task and step in ``_meta`` (the LLM-style
agent puts them in the ``intent_task`` / ``intent_step`` arguments instead and only uses
:meth:`Agent.record`), and appends every call to a :class:`Transcript` that the demo and
the tests read.

An agent never sees an action token: the gateway mints one per allowed call, burns it and
forwards the call with it.  What comes back is either the tool's result or a tool error
whose structured content is ``{decision_id, outcome, reasons, explanation, allowed_next,
approval_id}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

__all__ = [
    "Agent",
    "Call",
    "Say",
    "Transcript",
    "agent_main",
    "connect",
    "parse_args",
]

ROOT = Path(__file__).resolve().parent.parent
META_TASK = "intentgate/task"
META_STEP = "intentgate/step"
TOKEN_ENV = "INTENTGATE_AGENT_TOKEN"

Say = Callable[[str], None]


@dataclass
class Call:
    """One tool call as the agent saw it."""

    label: str  # what the agent meant to do, in words
    tool: str  # the name the gateway lists (``upstream__tool``)
    step: str | None
    arguments: dict[str, Any]
    outcome: str  # allow | deny | hold (a tool's own failure after an allow is still ``allow``)
    reasons: list[str] = field(default_factory=list)
    decision_id: str | None = None
    approval_id: str | None = None
    allowed_next: list[str] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    tool_error: str | None = None  # the tool server's error text, when it failed the call
    agent: str = ""  # which agent made it, when a transcript holds several

    @property
    def codes(self) -> list[str]:
        """The reason codes without their details (``binding_mismatch:order_id`` -> ``binding_mismatch``)."""
        return [r.split(":", 1)[0] for r in self.reasons]


@dataclass
class Transcript:
    """Everything an agent did, in order."""

    agent: str
    calls: list[Call] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reviews: list[dict[str, Any]] = field(default_factory=list)  # what a reviewer did over the REST API

    def call(self, label: str) -> Call:
        """The (last) call made with this label."""
        for c in reversed(self.calls):
            if c.label == label:
                return c
        raise KeyError(label)

    def outcomes(self) -> list[tuple[str, str]]:
        return [(c.label, c.outcome) for c in self.calls]

    def to_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "tasks": self.tasks, "notes": self.notes, "reviews": self.reviews,
                "calls": [vars(c) for c in self.calls]}


def _short(args: dict[str, Any], width: int = 70) -> str:
    text = json.dumps(args, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


class Agent:
    """A gateway client that records what it does.  ``say`` prints one line per step."""

    def __init__(self, client: Client, name: str, say: Say | None = print, *,
                 transcript: Transcript | None = None) -> None:
        self.client = client
        self.name = name
        self.transcript = transcript if transcript is not None else Transcript(name)
        self._say = say
        self.agent_id = ""  # its workload id, where the agent needs to name itself (break-glass)

    def say(self, line: str) -> None:
        if self._say is not None:
            self._say(line)

    def note(self, line: str) -> None:
        """An explanation, printed and kept in the transcript."""
        self.transcript.notes.append(line)
        self.say(f"    ↳ {line}")

    async def list_tools(self) -> list[types.Tool]:
        return list((await self.client.list_tools()).tools)

    def take(self, task: str, what: str = "") -> str:
        """Work on a task someone the agent trusts began for it (a task issuer); its id."""
        self.transcript.tasks.append(task)
        self.say(f"[{self.name}] assigned task {task}{': ' + what if what else ''}")
        return task

    async def begin(self, intent: str, params: dict[str, Any], reason: str) -> str:
        """Begin a task itself (only intents that allow ``begin: agent``); its id."""
        return await self._begin({"intent": intent, "params": params, "reason": reason},
                                 f"intent {intent} {_short(params)}")

    async def begin_with_grant(self, grant: str) -> str:
        """Begin the task a task grant from the host names (once); its id."""
        return await self._begin({"grant": grant}, "from its host's task grant")

    async def _begin(self, arguments: dict[str, Any], what: str) -> str:
        result = await self.client.call_tool("intentgate__begin_task", arguments)
        body = result.structured_content or {}
        if result.is_error:
            raise RuntimeError(f"the task was not begun ({what}): {body.get('reasons')} {body.get('explanation')}")
        task = str(body["task"])
        self.transcript.tasks.append(task)
        self.say(f"[{self.name}] begin task {task}: {what}")
        return task

    async def try_begin(self, label: str, intent: str, params: dict[str, Any], reason: str) -> Call:
        """Try to begin a task itself, recorded like any call (a hijacked agent re-planning)."""
        arguments = {"intent": intent, "params": params, "reason": reason}
        result = await self.client.call_tool("intentgate__begin_task", arguments)
        call = self.record(label, "intentgate__begin_task", None, arguments, result)
        if call.outcome == "allow" and call.result.get("task"):
            self.transcript.tasks.append(str(call.result["task"]))
        return call

    async def end(self, task: str) -> dict[str, Any]:
        result = await self.client.call_tool("intentgate__end_task", {"task": task})
        body = dict(result.structured_content or {})
        if result.is_error:
            self.say(f"[{self.name}] end task {task}: {', '.join(body.get('reasons', []))}")
        else:
            self.say(f"[{self.name}] end task {task}: {body.get('status')}, "
                     f"{body.get('revoked_tokens')} unused token(s) revoked")
        return {**body, "is_error": bool(result.is_error)}

    async def call(
        self, label: str, tool: str, arguments: dict[str, Any], *, task: str | None, step: str | None,
        extra_meta: dict[str, Any] | None = None,
    ) -> Call:
        """Call ``tool`` for ``step`` of ``task``, the task context in ``_meta``."""
        meta = {**(extra_meta or {}), META_TASK: task, META_STEP: step}
        result = await self.client.call_tool(tool, dict(arguments), meta=meta)
        return self.record(label, tool, step, arguments, result)

    def record(self, label: str, tool: str, step: str | None, arguments: dict[str, Any],
               result: types.CallToolResult) -> Call:
        body = dict(result.structured_content or {})
        if result.is_error and "reasons" in body:  # the gateway refused
            call = Call(label, tool, step, arguments, str(body.get("outcome", "deny")), list(body["reasons"]),
                        body.get("decision_id"), body.get("approval_id"), list(body.get("allowed_next") or []),
                        body)
        elif result.is_error:  # allowed, forwarded, and the tool server failed it
            text = "".join(getattr(c, "text", "") for c in result.content)
            call = Call(label, tool, step, arguments, "allow", result=body, tool_error=text)
        else:
            call = Call(label, tool, step, arguments, "allow", result=body)
        call.agent = self.name
        self.transcript.calls.append(call)
        self.say(self.render(call))
        return call

    def render(self, call: Call) -> str:
        head = f"[{self.name}] {call.label}: {call.tool} {_short(call.arguments)}"
        if call.outcome == "allow":
            tail = f"ALLOWED — tool failed: {call.tool_error}" if call.tool_error else "ALLOWED"
        else:
            tail = f"{call.outcome.upper()} ({', '.join(call.reasons)}; decision {call.decision_id})"
        return f"{head}\n    → {tail}"


# ----- connecting --------------------------------------------------------------------------


@asynccontextmanager
async def connect(url: str | None, token: str, *, stdio_config: Path | None = None) -> AsyncIterator[Client]:
    """An MCP client session to the gateway: Streamable HTTP at ``url``, or ``intentgate stdio``."""
    if stdio_config is not None:
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "intentgate", "stdio", "--config", str(stdio_config)],
            cwd=str(ROOT), env={**os.environ, TOKEN_ENV: token},
        )
        async with Client(params) as client:
            yield client
        return
    if url is None:
        raise ValueError("give the gateway's MCP URL or a config for stdio")
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


def parse_args(prog: str, description: str, argv: Sequence[str] | None = None, *, stdio: bool = False,
               admin: bool = False, task: bool = False,
               extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The command line every agent shares (``--url``, ``--token``, ``--json``; with ``task``,
    ``--task`` or ``--grant``: where the agent's task comes from), plus ``extra``'s options."""
    parser = argparse.ArgumentParser(prog=f"python -m agents_examples.{prog}", description=description)
    parser.add_argument("--url", default="http://127.0.0.1:8080/mcp", help="the gateway's MCP endpoint")
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                        help=f"the agent's workload token (default: ${TOKEN_ENV}); "
                             "e.g. $(intentgate agent-token --agent spiffe://example.org/agent/support-1)")
    if stdio:
        parser.add_argument("--stdio", type=Path, metavar="CONFIG", default=None,
                            help="start `intentgate stdio --config CONFIG` and talk to it over stdio instead")
    if admin:
        parser.add_argument("--admin-token", default=os.environ.get("INTENTGATE_ADMIN_TOKEN"),
                            help="a reviewer token (`intentgate admin-token`; default: $INTENTGATE_ADMIN_TOKEN)")
    if task:
        given = parser.add_mutually_exclusive_group(required=True)
        given.add_argument("--task", help="the task a task issuer began for this agent (python -m "
                                          "agents_examples.orchestrator prints one)")
        given.add_argument("--grant", help="a task grant from the host (intentgate task grant ...), presented once")
    parser.add_argument("--json", action="store_true", help="print the transcript as JSON at the end")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    if not args.token:
        parser.error(f"--token (or ${TOKEN_ENV}) is required")
    if admin and not args.admin_token:
        parser.error("--admin-token (or $INTENTGATE_ADMIN_TOKEN) is required")
    return args


def agent_main(transcript: Transcript, as_json: bool) -> None:
    """Print the transcript as JSON if asked; exit 0."""
    if as_json:
        print(json.dumps(transcript.to_dict(), indent=2, default=str))
