"""Decision parity: the embedded engine (regorus) and rego-cpp (regopy) agree on the policy.

Two independent Rego implementations evaluate the base policy on generated inputs; every
decision must be identical, and neither may fail on any input, however malformed.  regopy
runs in a child process: a crash in its native code then fails this test with a message
instead of taking the test run down.
"""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from collections import Counter
from typing import Any

from intentgate.policy import EmbeddedEngine, load_policy_dir
from tests.conftest import POLICY_DIR

N_INPUTS = 1500
MONDAY_10_MS = 1_799_056_800_000  # Monday 2027-01-04 10:00:00 UTC
HOUR_MS = 3_600_000
AGENT = "spiffe://example.org/agent/"

# An extra intent whose agent globs use every glob feature, so that glob.match is compared too.
GLOB_LAB = {"agents": [AGENT + "[ab]?-*", AGENT + "{ops,dev}-team", AGENT + "lab\\*", AGENT + "exact"]}

REGOPY_CHILD = r"""
import json, sys
import regopy
job = json.load(sys.stdin)
interp = regopy.Interpreter()
for name, text in job["modules"]:
    interp.add_module(name, text)
interp.add_data_json(json.dumps(job["data"]))
out = []
for inp in job["inputs"]:
    interp.set_input_term(json.dumps(inp))
    result = interp.query("x := data.intentgate.decision")
    if not result.ok():
        out.append({"error": str(result)[:500]})
    elif str(result) == "undefined":
        out.append({"error": "undefined"})
    else:
        out.append({"decision": json.loads(str(result.binding("x")))})
json.dump(out, sys.stdout)
"""

READ_NAMES = ["tickets://TCK-1001", "tickets://TCK-", "tickets://queues/eu", "tickets://queues/eu/vip",
              "summarise_ticket", "", "TCK-1", "tickets://TCK-1/../secrets"]

GARBAGE: list[Any] = [None, True, 0, -1, 1.5, 1e300, 10**20, "", "x", [], {}, ["a", 1], {"a": 1}]


def _leaf_paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    if isinstance(doc, dict) and doc:
        return [p for k, v in doc.items() for p in [prefix + (k,), *_leaf_paths(v, prefix + (k,))]]
    return []


def _set_path(doc: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def generate_inputs(n: int, seed: int = 20261123) -> list[dict]:
    rng = random.Random(seed)
    agents = [
        AGENT + "support-1", AGENT + "support-eu/7", AGENT + "ops-2", AGENT + "triage",
        "spiffe://evil.example/agent/support-1", "", AGENT + "ab-1", AGENT + "cx-1", AGENT + "dev-team",
        AGENT + "lab*", AGENT + "labX", AGENT + "exact", AGENT + "exactly",
    ]
    intents = ["refund-order", "triage-ticket", "rotate-credential", "glob-lab", "unknown-intent"]
    permitted = [
        (AGENT + "support-1", "refund-order"),
        (AGENT + "support-eu/7", "triage-ticket"),
        (AGENT + "triage", "triage-ticket"),
        (AGENT + "ops-2", "rotate-credential"),
    ]
    calls = [("orders", "get_order"), ("payments", "refund"), ("secrets", "rotate_credential"),
             ("tickets", "add_comment"), ("email", "send")]
    amounts = [0, -1, 1, 30, 999.99, 1000, 1000.01, 1100, 1100.5, 2599, 2600, 2601, 3000, 3000.01, 3300, 4999,
               "10", None, 1e300]
    currencies = ["EUR", "USD", "GBP", "JPY", None, ["EUR"]]
    offsets_ms = [0, -1000, 1000, 59 * 60_000, -1, 1]
    inputs = []
    for _ in range(n):
        upstream, tool = rng.choice(calls)
        args: dict = {"order_id": "ORD-7"}
        if upstream == "payments" or rng.random() < 0.1:
            amount, currency = rng.choice(amounts), rng.choice(currencies)
            if amount is not None:
                args["amount"] = amount
            if currency is not None:
                args["currency"] = currency
        # hours around Monday 10:00 cover the weekend on both sides and several window edges
        now_ms: Any = MONDAY_10_MS + rng.randrange(-60, 120) * HOUR_MS + rng.choice(offsets_ms)
        if rng.random() < (0.3 if upstream == "secrets" else 0.03):
            now_ms = rng.choice([now_ms + 0.5, float(now_ms), -1, 0, 10**20, "2027-01-04T10:00:00Z", None])
        agent, intent = rng.choice(agents), rng.choice(intents)
        if rng.random() < 0.5:  # half the time a pairing the intents permit
            agent, intent = rng.choice(permitted)
        if upstream == "payments" and rng.random() < 0.6:
            agent, intent = AGENT + "support-1", "refund-order"
        if upstream == "secrets" and rng.random() < 0.6:
            agent, intent = AGENT + "ops-2", "rotate-credential"
        doc: dict = {
            "agent": {"id": agent, "claims": {}},
            "intent": {"name": intent, "version": "1", "params": {}},
            "task": {"id": "tsk_x", "history": []},
            "call": {"upstream": upstream, "tool": tool, "step": "s", "arguments": args},
            "workflow": rng.choice([{"ok": True, "violations": []}] * 4 + [{"ok": False, "violations": ["x"]}]),
            "context": {"now_ms": now_ms, "environment": rng.choice(["prod", "prod", "staging"]), "mode": "enforce"},
        }
        if upstream != "payments" and rng.random() < 0.2:  # a resource or prompt read instead of a tool call
            doc = {
                "action": rng.choice(["resources/read", "resources/read", "prompts/get", "resources/write"]),
                "agent": {"id": agent, "claims": {}},
                "read": {"upstream": rng.choice(["tickets", "tick", "payments", "orders"]),
                         "name": rng.choice(READ_NAMES), "arguments": {}},
                "context": doc["context"],
            }
        r = rng.random()
        if r < 0.03:  # a whole part missing
            del doc[rng.choice(list(doc))]
        elif r < 0.04:
            del doc["context"]["environment"]
        elif r < 0.10:  # any field, at any depth, replaced by a value of the wrong shape
            _set_path(doc, rng.choice(_leaf_paths(doc)), copy.deepcopy(rng.choice(GARBAGE)))
        elif r < 0.11:
            doc = rng.choice([{}, {"workflow": {"ok": "true"}}, {"input": doc}])
        inputs.append(doc)
    return inputs


def test_embedded_and_regopy_decide_identically(registry) -> None:
    intents_doc = {**registry.data_document(), "glob-lab": GLOB_LAB}
    bundle = load_policy_dir(POLICY_DIR)
    inputs = generate_inputs(N_INPUTS)

    embedded = EmbeddedEngine(POLICY_DIR, intents_doc)
    ours = [embedded.evaluate_sync(inp).model_dump() for inp in inputs]  # raises on any engine failure

    job = json.dumps({"modules": bundle.modules, "data": bundle.data_with(intents_doc), "inputs": inputs})
    child = subprocess.run([sys.executable, "-c", REGOPY_CHILD], input=job, capture_output=True, text=True,
                           timeout=600)
    assert child.returncode == 0, f"regopy child failed ({child.returncode}): {child.stderr[-2000:]}"
    theirs = json.loads(child.stdout)
    assert len(theirs) == len(inputs)

    errors = [(inp, t["error"]) for inp, t in zip(inputs, theirs, strict=True) if "error" in t]
    assert not errors, f"regopy failed on {len(errors)} inputs, first: {json.dumps(errors[0])[:1500]}"
    mismatches = []
    for inp, a, t in zip(inputs, ours, theirs, strict=True):
        b = {**t["decision"], "reasons": sorted(t["decision"]["reasons"])}
        if a != b:
            mismatches.append({"input": inp, "regorus": a, "regopy": b})
    assert not mismatches, f"{len(mismatches)} differing decisions, first: {json.dumps(mismatches[0])[:1500]}"

    # the inputs are not vacuous: every kind of outcome and every policy reason occurs often
    outcomes = Counter("hold" if d["allow"] and d["hold"] else "allow" if d["allow"] else "deny" for d in ours)
    assert min(outcomes["allow"], outcomes["deny"], outcomes["hold"]) >= 30, outcomes
    reasons = Counter(r for d in ours for r in d["reasons"])
    expected = {"workflow_violation", "unknown_intent", "agent_not_permitted", "refund_over_limit",
                "read_not_permitted", "unknown_action", "large_refund", "refund_currency_unsupported", "refund_amount_invalid", "outside_change_window"}
    assert set(reasons) == expected, reasons
    assert min(reasons.values()) >= 10, reasons
    # both sides of the change window and of the agent globs were exercised
    rotations = [d for inp, d in zip(inputs, ours, strict=True)
                 if isinstance(inp.get("call"), dict) and inp["call"].get("tool") == "rotate_credential"
                 and d["reasons"] in ([], ["outside_change_window"])]
    assert Counter(d["allow"] for d in rotations).keys() == {True, False}
    reads = [d for inp, d in zip(inputs, ours, strict=True) if inp.get("action") == "resources/read"]
    assert Counter(d["allow"] for d in reads).keys() == {True, False}
    lab = [d for inp, d in zip(inputs, ours, strict=True)
           if isinstance(inp.get("intent"), dict) and inp["intent"].get("name") == "glob-lab"]
    assert Counter("agent_not_permitted" in d["reasons"] for d in lab).keys() == {True, False}
