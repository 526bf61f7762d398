"""POST /v1/tokens/redeem: a tool server burns a /v1/decide token in the gateway's database.

The app runs in process over a real SQLite store; tokens come from real allow decisions
(``/v1/decide``) and are real EdDSA JWTs.  Every refusal must be in the decision log.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from intentgate.config import GatewayConfig, load_config
from intentgate.keys import KeySet
from intentgate.runtime import Runtime
from intentgate.tokens import ActionTokenIssuer
from intentgate.web import create_app
from tests.conftest import INTENTS_DIR, POLICY_DIR
from tests.test_review_api import SUPPORT, agent_token
from tests.tasks import ISSUER

TICKET = {"ticket_id": "TCK-1"}


@dataclass
class App:
    client: TestClient
    config: GatewayConfig

    @property
    def rt(self) -> Runtime:
        return self.client.app.state.runtime  # type: ignore[attr-defined]

    def begin(self) -> str:
        started = self.client.portal.call(  # type: ignore[union-attr]
            functools.partial(self.rt.decider.begin_task, issuer=ISSUER),
            SUPPORT, "refund-order", {"ticket_id": "TCK-1", "order_id": "ORD-7"}, "test",
        )
        return started.task_id

    def decide(self, task: str, step: str = "read_ticket", tool: str = "get_ticket",
               upstream: str = "tickets", arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        r = self.client.post("/v1/decide", headers={"Authorization": f"Bearer {agent_token(self.config)}"},
                             json={"task": task, "step": step, "upstream": upstream, "tool": tool,
                                   "arguments": TICKET if arguments is None else arguments})
        assert r.status_code == 200, r.text
        return r.json()

    def redeem(self, token: str, arguments: dict[str, Any] | None = None, audience: str = "tickets",
               tool: str = "tickets.get_ticket", caller: str | None = None) -> Any:
        """Redeem as a tool server would; ``caller``: its own workload token (Authorization)."""
        return self.client.post("/v1/tokens/redeem", headers={"Authorization": f"Bearer {caller}"} if caller else {},
                                json={"token": token, "audience": audience, "tool": tool,
                                      "arguments": TICKET if arguments is None else arguments})

    def redeem_refusals(self) -> list[tuple[str, list[str], str | None]]:
        def q(conn: Any) -> list[Any]:
            return conn.execute(text("SELECT agent, reasons, task_id FROM decisions WHERE kind = 'token/redeem' "
                                     "ORDER BY seq")).all()

        rows = self.rt.store.db.run_sync(q)
        return [(a, json.loads(r) if isinstance(r, str) else r, t) for a, r, t in rows]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    config = load_config(None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=POLICY_DIR)
    with TestClient(create_app(config)) as client:
        yield App(client, config)


def test_a_decide_token_is_honoured_once_and_the_replay_is_recorded(app: App) -> None:
    task = app.begin()
    allowed = app.decide(task)
    assert allowed["outcome"] == "allow" and allowed["token"]
    r = app.redeem(allowed["token"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["agent"] == SUPPORT.id and body["task"] == task and body["step"] == "read_ticket"
    assert body["tool"] == "tickets.get_ticket"

    again = app.redeem(allowed["token"])
    assert again.status_code == 409 and again.json()["error"] == "token_replayed"
    refusals = app.redeem_refusals()
    assert refusals == [(SUPPORT.id, [f"token_replayed:{body['jti']}"], task)]
    assert again.json()["decision_id"]


def test_a_refused_presentation_does_not_burn_the_token(app: App) -> None:
    task = app.begin()
    token = app.decide(task)["token"]
    tampered = app.redeem(token, arguments={"ticket_id": "TCK-2"})
    assert tampered.status_code == 403 and tampered.json()["error"] == "token_arguments"
    elsewhere = app.redeem(token, audience="payments", tool="payments.refund")
    assert elsewhere.status_code == 403 and elsewhere.json()["error"] == "token_audience"
    assert app.redeem(token).status_code == 200  # the genuine call still gets through, once
    reasons = [r[1][0] for r in app.redeem_refusals()]
    assert reasons == ["token_arguments", "token_audience"]


def test_forged_and_malformed_tokens_are_refused_and_recorded_as_unverified(app: App, tmp_path: Path) -> None:
    task = app.begin()
    genuine = app.decide(task)["token"]
    forger = ActionTokenIssuer(KeySet.open_or_create(tmp_path / "forger"))
    forged = forger.mint(agent=SUPPORT.id, task_id=task, intent="refund-order", step="read_ticket",
                         upstream="tickets", tool="tickets.get_ticket",
                         arguments_sha256="0" * 64, task_expires_at=4_000_000_000).token
    for token in (forged, "not.a.jwt", genuine[:-4] + "AAAA"):
        r = app.redeem(token)
        assert r.status_code == 403 and r.json()["error"] == "invalid_token", r.text
    assert app.redeem("x" * 9000).status_code == 422  # over the size limit: refused by the schema
    assert [(a, r[0]) for a, r, _ in app.redeem_refusals()] == [("unverified", "invalid_token")] * 3


def test_ending_the_task_revokes_an_unredeemed_token(app: App) -> None:
    task = app.begin()
    token = app.decide(task)["token"]
    app.client.portal.call(app.rt.decider.end_task, SUPPORT, task)  # type: ignore[union-attr]
    r = app.redeem(token)
    assert r.status_code == 409 and r.json()["error"] == "token_revoked"
    assert app.rt.store.verify_chain().ok
