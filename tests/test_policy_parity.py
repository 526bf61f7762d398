"""Decision parity: the embedded engine (regorus) and rego-cpp (regopy) agree on the policy.

Two independent Rego implementations evaluate the base policy on generated inputs; every
decision must be identical.  regopy runs in a child process: a crash in its native code then
fails this test with a message instead of taking the test run down.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter

from gateway.policy import EmbeddedEngine, load_policy_dir
from tests.conftest import POLICY_DIR

N_INPUTS = 1500
MONDAY_10_MS = 1_799_056_800_000
HOUR_MS = 3_600_000

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
    out.append(json.loads(str(result.binding("x"))) if result else None)
json.dump(out, sys.stdout)
"""


def generate_inputs(n: int, seed: int = 20261123) -> list[dict]:
    rng = random.Random(seed)
    agents = [
        "spiffe://example.org/agent/support-1",
        "spiffe://example.org/agent/support-eu/7",
        "spiffe://example.org/agent/ops-2",
        "spiffe://example.org/agent/triage",
        "spiffe://evil.example/agent/support-1",
        "",
    ]
    intents = ["refund-order", "triage-ticket", "rotate-credential", "unknown-intent"]
    permitted = [
        ("spiffe://example.org/agent/support-1", "refund-order"),
        ("spiffe://example.org/agent/support-eu/7", "triage-ticket"),
        ("spiffe://example.org/agent/triage", "triage-ticket"),
        ("spiffe://example.org/agent/ops-2", "rotate-credential"),
    ]
    calls = [
        ("orders", "get_order"),
        ("payments", "refund"),
        ("secrets", "rotate_credential"),
        ("tickets", "add_comment"),
        ("email", "send"),
    ]
    amounts = [0, -1, 1, 30, 999.99, 1000, 1000.01, 1100, 1100.5, 2599, 2600, 2601, 3000, 3000.01, 3300, 4999, "10", None]
    currencies = ["EUR", "USD", "GBP", "JPY", None]
    offsets_h = list(range(-60, 120, 1))  # around Monday 10:00: covers the weekend and several windows
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
        now_ms = MONDAY_10_MS + rng.choice(offsets_h) * HOUR_MS + rng.choice([0, -1000, 1000, 59 * 60_000])
        agent, intent = rng.choice(agents), rng.choice(intents)
        if rng.random() < 0.5:  # half the time a pairing the intents permit
            agent, intent = rng.choice(permitted)
        if upstream == "payments" and rng.random() < 0.6:
            agent, intent = "spiffe://example.org/agent/support-1", "refund-order"
        doc = {
            "agent": {"id": agent, "claims": {}},
            "intent": {"name": intent, "version": "1", "params": {}},
            "task": {"id": "tsk_x", "history": []},
            "call": {"upstream": upstream, "tool": tool, "step": "s", "arguments": args},
            "workflow": rng.choice(
                [{"ok": True, "violations": []}] * 4 + [{"ok": False, "violations": ["step_out_of_order:s"]}]
            ),
            "context": {"now_ms": now_ms, "environment": rng.choice(["prod", "prod", "staging"]), "mode": "enforce"},
        }
        # sometimes drop or break a part of the input: missing input must deny on both engines
        r = rng.random()
        if r < 0.03:
            del doc[rng.choice(["agent", "intent", "call", "workflow", "context"])]
        elif r < 0.05:
            doc["workflow"] = {"ok": "true"}
        inputs.append(doc)
    return inputs


def test_embedded_and_regopy_decide_identically(registry) -> None:
    bundle = load_policy_dir(POLICY_DIR)
    data = bundle.data_with(registry.data_document())
    inputs = generate_inputs(N_INPUTS)

    embedded = EmbeddedEngine(POLICY_DIR, registry.data_document())
    ours = [embedded.evaluate_sync(inp).model_dump() for inp in inputs]

    job = json.dumps({"modules": bundle.modules, "data": data, "inputs": inputs})
    child = subprocess.run(
        [sys.executable, "-c", REGOPY_CHILD], input=job, capture_output=True, text=True, timeout=600
    )
    assert child.returncode == 0, f"regopy child failed ({child.returncode}): {child.stderr[-2000:]}"
    theirs = json.loads(child.stdout)
    assert len(theirs) == len(inputs)

    mismatches = []
    for inp, a, b in zip(inputs, ours, theirs, strict=True):
        b_norm = None if b is None else {**b, "reasons": sorted(b["reasons"])}
        if a != b_norm:
            mismatches.append((inp, a, b))
    assert not mismatches, f"{len(mismatches)} differing decisions, first: {json.dumps(mismatches[0])[:1500]}"

    # the inputs are not vacuous: every kind of outcome and every policy reason occurs
    outcomes = Counter("hold" if d["allow"] and d["hold"] else "allow" if d["allow"] else "deny" for d in ours)
    assert min(outcomes["allow"], outcomes["deny"], outcomes["hold"]) >= 20, outcomes
    reasons = Counter(r for d in ours for r in d["reasons"])
    assert set(reasons) >= {
        "workflow_violation", "unknown_intent", "agent_not_permitted", "refund_over_limit", "large_refund",
        "refund_currency_unsupported", "refund_amount_invalid", "outside_change_window",
    }, reasons
