"""An agent shaped like an LLM host: it sees only tool names, descriptions and JSON Schemas.

LLM hosts (chat apps, agent frameworks) hand a model the ``tools/list`` result and execute
the tool calls the model emits: a name and a JSON object of arguments, no ``_meta``.  The
gateway serves such clients by adding ``intent_task`` and ``intent_step`` to every tool's
input schema; the model fills them like any other argument and the gateway strips them
before forwarding.

This example runs that loop with a **scripted planner** standing in for the model (no
network, no API key): it triages ticket TCK-1001 on the ``triage-ticket`` task the support
queue began for it (the host puts the task id in the model's instructions: read the ticket,
page through the customer's orders, leave a triage comment), working out each call's step from
the intent's graph (``intentgate__list_intents``) and correcting itself from the gateway's
structured errors: its first call forgets the task context, as models often do, is refused
with ``missing_task_context``, and is sent again with it.  It ends the task without the
optional ``notify`` step.

With ``--llm anthropic`` (and the ``anthropic`` package installed, ``ANTHROPIC_API_KEY`` set)
a real model plans instead, through the same loop.

    python -m agents_examples.llm_style_agent --url http://127.0.0.1:8080/mcp --token TOKEN --task TASK
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import mcp_types as types

from ._agent import Agent, Say, Transcript, agent_main, connect, parse_args

__all__ = ["AGENT", "AnthropicPlanner", "ScriptedPlanner", "ToolCall", "function_specs", "run"]

AGENT = "spiffe://example.org/agent/support-llm"
TICKET, CUSTOMER = "TCK-1001", "alice.martin@example.com"
INTENT = "triage-ticket"
PARAMS = {"ticket_id": TICKET, "customer_email": CUSTOMER}


def goal(task: str) -> str:
    """The model's instructions, as the host writes them: the task was begun for it."""
    return (f"Triage support ticket {TICKET} from {CUSTOMER}: read it, look through the customer's orders, "
            f"and leave a short triage comment on the ticket. Your task is {task} (intent {INTENT}); "
            "end the task when done.")
CONTEXT_ARGS = ("intent_task", "intent_step")


@dataclass
class ToolCall:
    """What a model emits: a tool name and its arguments (task context included)."""

    name: str
    arguments: dict[str, Any]
    label: str = ""


@dataclass
class ToolResult:
    name: str
    is_error: bool
    text: str
    structured: dict[str, Any] = field(default_factory=dict)


class Planner(Protocol):
    """The model: given the tools and what happened so far, the next call (None: done)."""

    async def next_call(self, tools: list[dict[str, Any]], history: list[tuple[ToolCall, ToolResult]]
                        ) -> ToolCall | None: ...


def function_specs(tools: Sequence[types.Tool]) -> list[dict[str, Any]]:
    """The ``tools/list`` result as LLM function-calling specs (name, description, JSON Schema)."""
    return [{"name": t.name, "description": t.description or "", "input_schema": t.input_schema} for t in tools]


class ScriptedPlanner:
    """A deterministic stand-in for a model, reading the same tool specs and results one would."""

    def __init__(self, task: str, ticket_id: str = TICKET, customer: str = CUSTOMER) -> None:
        self.ticket_id, self.customer = ticket_id, customer
        self.intent: dict[str, Any] | None = None
        self.task: str | None = task
        self.taken: list[str] = []  # steps taken so far
        self.context_known = False  # has it noticed the intent_task / intent_step arguments yet?
        self.ticket: dict[str, Any] = {}
        self.orders: list[dict[str, Any]] = []

    def _step_for(self, tool: str) -> str:
        """The step of the intent that calls ``tool`` and can follow the steps taken so far."""
        assert self.intent is not None
        steps = self.intent["steps"]
        reachable = self.intent["start"] if not self.taken else steps[self.taken[-1]]["next"]
        for name in reachable:
            if steps[name]["tool"] == tool:
                return name
        raise LookupError(f"no step of {self.intent['name']} calls {tool} after {self.taken}")

    def _gated(self, tool: str, arguments: dict[str, Any], label: str) -> ToolCall:
        step = self._step_for(tool)
        if self.context_known:
            arguments = {**arguments, "intent_task": self.task, "intent_step": step}
        return ToolCall(tool, arguments, label)

    async def next_call(self, tools: list[dict[str, Any]], history: list[tuple[ToolCall, ToolResult]]
                        ) -> ToolCall | None:
        if not history:
            return ToolCall("intentgate__list_intents", {}, "list the intents it may declare")
        last_call, last = history[-1]
        if last.is_error:
            if "missing_task_context" in last.structured.get("reasons", []) and not self.context_known:
                # the error says what is missing; the tool's schema says where it goes
                schema = next(t["input_schema"] for t in tools if t["name"] == last_call.name)
                assert all(a in schema["properties"] for a in CONTEXT_ARGS)
                self.context_known = True
                args = {k: v for k, v in last_call.arguments.items() if k not in CONTEXT_ARGS}
                return self._gated(last_call.name, args, f"{last_call.label}, with the task context")
            return None  # anything else: give up (the task is ended below)
        if last_call.name == "intentgate__list_intents":
            self.intent = next(i for i in last.structured["intents"] if i["name"] == INTENT)
            return self._gated("tickets__get_ticket", {"ticket_id": self.ticket_id}, "read the ticket")
        if "intent_step" in last_call.arguments:
            self.taken.append(last_call.arguments["intent_step"])
        if last_call.name == "tickets__get_ticket":
            self.ticket = last.structured
            return self._gated("orders__list_orders", {"customer_email": self.customer, "page": 1},
                               "list the customer's orders, page 1")
        if last_call.name == "orders__list_orders":
            self.orders.extend(last.structured["orders"])
            if last.structured.get("next_page"):
                page = last.structured["next_page"]
                return self._gated("orders__list_orders", {"customer_email": self.customer, "page": page},
                                   f"list the customer's orders, page {page}")
            latest = self.orders[0]
            body = (f"Triage: {len(self.orders)} orders on file for {self.customer}; the ticket is about "
                    f"{self.ticket.get('order_id')} ({latest['order_id']} is the latest, {latest['status']}). "
                    "Looks like a straightforward damaged-item refund.")
            return self._gated("tickets__add_comment", {"ticket_id": self.ticket_id, "body": body},
                               "leave a triage comment")
        if last_call.name == "tickets__add_comment":
            return ToolCall("intentgate__end_task", {"task": self.task}, "end the task (no customer email)")
        return None


class AnthropicPlanner:
    """A real model plans (optional: needs the ``anthropic`` package and ``ANTHROPIC_API_KEY``)."""

    def __init__(self, model: str, task: str) -> None:
        import anthropic  # type: ignore[import-not-found]  # only when asked for

        self.client = anthropic.AsyncAnthropic()
        self.model = model
        self.messages: list[dict[str, Any]] = [{"role": "user", "content": goal(task)}]
        self.pending: str | None = None

    async def next_call(self, tools: list[dict[str, Any]], history: list[tuple[ToolCall, ToolResult]]
                        ) -> ToolCall | None:
        if history and self.pending is not None:
            result = history[-1][1]
            self.messages.append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": self.pending, "content": result.text,
                 "is_error": result.is_error}]})
        reply = await self.client.messages.create(model=self.model, max_tokens=1024, tools=tools,
                                                  messages=self.messages)
        self.messages.append({"role": "assistant", "content": [b.model_dump() for b in reply.content]})
        use = next((b for b in reply.content if b.type == "tool_use"), None)
        if use is None:
            return None
        self.pending = use.id
        return ToolCall(use.name, dict(use.input), f"model: {use.name}")


async def run(url: str, token: str, *, task: str, say: Say | None = print, planner: Planner | None = None,
              max_calls: int = 20) -> Transcript:
    """The host loop on ``task`` (begun for the agent by the support queue): list tools, let the
    planner pick calls, run them without ``_meta``."""
    planner = planner or ScriptedPlanner(task)
    async with connect(url, token) as client:
        agent = Agent(client, "llm-style", say)
        agent.take(task, f"{INTENT} for {TICKET}")
        listed = await agent.list_tools()
        tools = function_specs(listed)
        gated = [t for t in tools if not t["name"].startswith("intentgate__")]
        with_context = [t for t in gated if set(CONTEXT_ARGS) <= set(t["input_schema"].get("properties", {}))]
        agent.note(f"tools/list: {len(tools)} tools; {len(with_context)} of the {len(gated)} gated ones take "
                   "intent_task / intent_step as arguments")
        history: list[tuple[ToolCall, ToolResult]] = []
        for _ in range(max_calls):
            call = await planner.next_call(tools, history)
            if call is None:
                break
            result = await client.call_tool(call.name, call.arguments)  # no _meta: arguments only
            text = "".join(getattr(c, "text", "") for c in result.content)
            history.append((call, ToolResult(call.name, bool(result.is_error), text,
                                             dict(result.structured_content or {}))))
            if call.name.startswith("intentgate__"):
                _gateway_tool(agent, call, result)
            else:
                args = {k: v for k, v in call.arguments.items() if k not in CONTEXT_ARGS}
                agent.record(call.label or call.name, call.name, call.arguments.get("intent_step"), args, result)
        for task in agent.transcript.tasks:  # whatever happened, leave no task open
            if not any(c.name == "intentgate__end_task" and c.arguments.get("task") == task for c, _ in history):
                await agent.end(task)
        return agent.transcript


def _gateway_tool(agent: Agent, call: ToolCall, result: types.CallToolResult) -> None:
    body = result.structured_content or {}
    if result.is_error:
        shown = f"REFUSED ({', '.join(body.get('reasons', []))})"
    elif call.name == "intentgate__list_intents":
        shown = "may declare " + ", ".join(i["name"] for i in body.get("intents", []))
    elif call.name == "intentgate__begin_task":
        agent.transcript.tasks.append(str(body["task"]))
        shown = f"task {body['task']}, start steps {body.get('start_steps')}"
    else:
        shown = f"{body.get('status')}, {body.get('revoked_tokens')} unused token(s) revoked"
    agent.say(f"[{agent.name}] {call.label}: {call.name}\n    → {shown}")


def main(argv: Sequence[str] | None = None) -> None:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--llm", choices=["scripted", "anthropic"], default="scripted",
                            help="who plans the calls (default: the scripted planner, no network)")
        parser.add_argument("--model", default=os.environ.get("ANTHROPIC_MODEL"),
                            help="the model for --llm anthropic (default: $ANTHROPIC_MODEL)")

    args = parse_args("llm_style_agent", "An LLM-style agent (task context in arguments, not _meta).", argv,
                      task=True, extra=options)
    if args.task is None:
        raise SystemExit("the LLM-style agent works on a task its host gives it: give --task")
    planner: Planner | None = None
    if args.llm == "anthropic":
        if not args.model:
            raise SystemExit("--llm anthropic needs --model (or $ANTHROPIC_MODEL)")
        try:
            planner = AnthropicPlanner(args.model, args.task)
        except ImportError as exc:
            raise SystemExit("--llm anthropic needs the anthropic package (pip install anthropic)") from exc
    agent_main(asyncio.run(run(args.url, args.token, task=args.task, planner=planner)), args.json)


if __name__ == "__main__":
    main()
