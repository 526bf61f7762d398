"""Reviewer actions from the CLI (approvals, approve/reject, grants, sign-off, replay) on a
database filled by the real pipeline, without a running gateway."""

from __future__ import annotations

import json
import re
from pathlib import Path

from intentgate.clock import FrozenClock
from intentgate.runtime import Runtime
from tests.conftest import strict_refund_policy
from tests.test_review_api import HOUR, MONDAY_10, SUPPORT, _call
from tests.test_review_cli import cli, filled  # noqa: F401 - the fixture

HELD = {"order_id": "ORD-7", "amount": 1800, "currency": "EUR"}


def test_approve_from_the_queue_then_the_retry_is_allowed(filled) -> None:  # noqa: F811
    config_path, config, f = filled
    queue = json.loads(cli(config_path, "approvals", "--json").stdout)
    assert [a["decision_id"] for a in queue] == [f["b_hold"]]
    approval = queue[0]["id"]
    table = cli(config_path, "approvals").stdout
    assert approval in table and "payments.refund" in table

    out = cli(config_path, "approve", approval, "--note", "verified", "--reviewer", "carol").stdout
    assert "approved by carol" in out
    again = cli(config_path, "reject", approval, code=1)
    assert "already approved" in again.output
    assert json.loads(cli(config_path, "approvals", "--json").stdout) == []
    cli(config_path, "approve", "apr_nope", code=1)

    import asyncio

    async def retry():
        rt = await Runtime.open(config, clock=FrozenClock(MONDAY_10 + HOUR + 60))
        try:
            return await rt.decider.decide(_call(f.task_b, "refund", "payments.refund", HELD))
        finally:
            await rt.aclose()

    verdict = asyncio.run(retry())
    assert verdict.outcome == "allow" and verdict.reasons == [f"approved:{approval}"]


def test_grants_from_the_cli(filled) -> None:  # noqa: F811
    config_path, _, _ = filled
    made = json.loads(cli(config_path, "grant", "--agent", SUPPORT.id, "--tool", "payments.refund",
                          "--reason", "incident INC-9", "--minutes", "30", "--json").stdout)
    assert made["active"] and made["created_by"].startswith("cli:")
    bad = cli(config_path, "grant", "--agent", SUPPORT.id, "--reason", "x y z", code=2)
    assert "exactly one of tool or intent" in bad.output
    too_long = cli(config_path, "grant", "--agent", SUPPORT.id, "--tool", "payments.refund", "--reason", "long",
                   "--minutes", str(8 * 60), code=2)
    assert "at most" in too_long.output
    pending = json.loads(cli(config_path, "grants", "--needs-review", "--json").stdout)
    assert [g["id"] for g in pending] == [made["id"]]
    assert "needs review" in cli(config_path, "grants").stdout
    cli(config_path, "sign-off", made["id"], "--note", "ok")
    cli(config_path, "sign-off", made["id"], code=1)
    assert json.loads(cli(config_path, "grants", "--needs-review", "--json").stdout) == []
    cli(config_path, "revoke-grant", made["id"])
    assert json.loads(cli(config_path, "grants", "--active", "--json").stdout) == []


def test_replay_from_the_cli(filled, tmp_path: Path) -> None:  # noqa: F811
    config_path, _, f = filled
    unchanged = cli(config_path, "replay").stdout
    assert "no outcome would change" in unchanged
    candidate = strict_refund_policy(tmp_path)
    changed = cli(config_path, "replay", "--policy", str(candidate), code=1)
    assert "would change" in changed.stdout and f["a_refund"] in changed.stdout
    assert re.search(r"\b20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ\b", changed.stdout)  # when: RFC 3339, not epoch seconds
    report = json.loads(cli(config_path, "replay", f["a_refund"], "--policy", str(candidate), "--json", code=1).stdout)
    assert report["checked"] == 1 and report["transitions"] == {"allow->deny": 1}
    cli(config_path, "replay", "dec_nope", code=2)
    assert "does not exist" in cli(config_path, "replay", "--intents", str(tmp_path / "nope"), code=2).output
