"""POST /v1/tokens/redeem is not an open door (issue #15): who may redeem, and how often.

The app runs in process over a real SQLite store, as in ``test_redeem``; action tokens come
from real allow decisions, and every workload token (agents' and tool servers') is a real
EdDSA JWT from the gateway's development issuer.  A caller turned away at the door is
counted, never recorded row by row; a caller let in has its refusals recorded as before.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from intentgate.clock import FrozenClock
from intentgate.config import RedeemConfig, load_config
from intentgate.errors import ConfigError, ReasonCode
from intentgate.identity import AgentIdentity, DevIssuer, IdentityVerifier
from intentgate.keys import KeySet
from intentgate.metrics import Metrics
from intentgate.redeem import RedeemDoor, TurnedAway
from intentgate.web import create_app
from tests.conftest import INTENTS_DIR, NOW, POLICY_DIR
from tests.test_redeem import App as RedeemApp

SUPPORT = "spiffe://example.org/agent/support-1"
TICKETS_SERVER = "spiffe://example.org/tool/tickets"
PAYMENTS_SERVER = "spiffe://example.org/tool/payments"
CALLERS = [{"subjects": [TICKETS_SERVER], "audiences": ["tickets"]},
           {"subjects": ["spiffe://example.org/tool/*"], "audiences": ["payments"]}]


class App(RedeemApp):
    """``test_redeem``'s app (a task begun by the orchestrator, /v1/decide, redeem), plus the
    tool servers' own credentials and the door's counters."""

    def token_of(self, subject: str) -> str:
        """A workload token from the gateway's development issuer (what `intentgate agent-token` mints)."""
        return DevIssuer(KeySet.open_or_create(self.config.agent_issuer_keys_dir)).mint(subject)

    def action_token(self) -> str:
        """An action token for tickets.get_ticket, from a real allow on a task the orchestrator began."""
        allowed = self.decide(self.begin())
        assert allowed["outcome"] == "allow", allowed
        return str(allowed["token"])

    def decisions(self) -> int:
        """Rows in the decision log, counted in the store."""
        return int(self.rt.store.db.run_sync(lambda conn: conn.execute(text("SELECT count(*) FROM decisions")).scalar()))

    def redeem_reasons(self) -> list[list[str]]:
        """The reasons of each recorded redemption refusal, oldest first."""
        return [reasons for _, reasons, _ in self.redeem_refusals()]

    def turned_away(self) -> dict[str, float]:
        """``intentgate_redeem_turned_away_total`` by reason, as /metrics serves it."""
        metrics = self.client.get("/metrics").text
        return {m[1]: float(m[2]) for m in re.finditer(
            r'^intentgate_redeem_turned_away_total\{reason="([a-z_]+)"\} (\S+)$', metrics, re.M)}


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., App]]:
    clients: list[TestClient] = []

    def make(**redeem: Any) -> App:
        config = load_config(None, data_dir=tmp_path, intents_dir=INTENTS_DIR, policy_dir=POLICY_DIR, redeem=redeem)
        client = TestClient(create_app(config))
        client.__enter__()
        clients.append(client)
        return App(client, config)

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def test_an_anonymous_flood_is_rate_limited_and_does_not_grow_the_decision_log(
        make_app: Callable[..., App], caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(rate_limit_per_second=0.01, rate_limit_burst=5, log_every_seconds=3600)
    before = app.decisions()
    with caplog.at_level(logging.WARNING, logger="intentgate.redeem"):
        answers = [app.redeem("not.a.jwt") for _ in range(300)]
    statuses = Counter(r.status_code for r in answers)
    assert statuses == {403: 5, 429: 295}  # the burst reaches the token check (and is recorded), then 429
    limited = answers[-1]
    assert limited.json() == {"error": "rate_limited", "message": limited.json()["message"], "decision_id": None}
    assert 1 <= int(limited.headers["Retry-After"]) <= 100  # one token back at 0.01 a second
    assert app.decisions() - before == 5  # not one row per request
    assert app.turned_away() == {"unauthenticated": 0, "redeemer_not_permitted": 0, "rate_limited": 295}
    lines = [r for r in caplog.records if "turned away" in r.getMessage()]
    assert len(lines) == 1 and "1 rate_limited" in lines[0].getMessage()  # at most one line per 3600 s


def test_with_require_caller_no_credential_is_a_401_and_nothing_is_recorded(make_app: Callable[..., App]) -> None:
    app = make_app(require_caller=True, callers=CALLERS, rate_limit_per_second=0.01, rate_limit_burst=3)
    token = app.action_token()
    before = app.decisions()
    anonymous = [app.redeem(token) for _ in range(10)]
    assert [r.status_code for r in anonymous] == [401] * 3 + [429] * 7
    assert anonymous[0].json()["error"] == "unauthenticated" and anonymous[0].json()["decision_id"] is None
    assert anonymous[0].headers["WWW-Authenticate"] == "Bearer"
    assert app.decisions() == before
    assert app.turned_away() == {"unauthenticated": 3, "redeemer_not_permitted": 0, "rate_limited": 7}
    # the caller's own rate is its own: the anonymous address used up its bucket, not the tool server's
    assert app.redeem(token, caller=app.token_of(TICKETS_SERVER)).status_code == 200


def test_a_credential_that_does_not_verify_is_a_401_even_where_none_is_required(
        make_app: Callable[..., App], tmp_path: Path) -> None:
    app = make_app(callers=CALLERS)
    token = app.action_token()
    before = app.decisions()
    forged = DevIssuer(KeySet.open_or_create(tmp_path / "forger")).mint(TICKETS_SERVER)
    for credential in (forged, "not.a.jwt"):
        r = app.redeem(token, caller=credential)
        assert r.status_code == 401 and r.json()["error"] == "unauthenticated", r.text
    assert app.decisions() == before
    assert app.redeem(token).status_code == 200  # anonymous, as before: the token is the credential


def test_a_caller_not_listed_for_the_audience_is_a_403_and_the_token_stays_good(make_app: Callable[..., App]) -> None:
    app = make_app(require_caller=True, callers=CALLERS)
    token = app.action_token()
    before = app.decisions()
    for caller in (PAYMENTS_SERVER, SUPPORT):  # another upstream's tool server; the agent itself
        r = app.redeem(token, caller=app.token_of(caller))
        assert r.status_code == 403 and r.json()["error"] == "redeemer_not_permitted", r.text
        assert r.json()["decision_id"] is None
    assert app.decisions() == before
    assert app.turned_away()["redeemer_not_permitted"] == 2
    assert app.redeem(token, caller=app.token_of(TICKETS_SERVER)).status_code == 200


def test_an_allowed_caller_redeems_once_and_its_replay_is_recorded(make_app: Callable[..., App]) -> None:
    app = make_app(require_caller=True, callers=CALLERS)
    token = app.action_token()
    caller = app.token_of(TICKETS_SERVER)
    first = app.redeem(token, caller=caller)
    assert first.status_code == 200 and first.json()["agent"] == SUPPORT, first.text
    before = app.decisions()
    again = app.redeem(token, caller=caller)
    assert again.status_code == 409 and again.json()["error"] == "token_replayed"
    assert again.json()["decision_id"]
    assert app.decisions() == before + 1
    assert app.redeem_reasons() == [[f"token_replayed:{first.json()['jti']}"]]
    assert app.rt.store.verify_chain().ok


def test_an_authenticated_caller_over_its_rate_gets_429_unrecorded(make_app: Callable[..., App]) -> None:
    app = make_app(require_caller=True, callers=CALLERS, rate_limit_per_second=0.01, rate_limit_burst=2)
    token = app.action_token()
    caller = app.token_of(TICKETS_SERVER)
    before = app.decisions()
    codes = [app.redeem(token, caller=caller).status_code for _ in range(4)]
    assert codes == [200, 409, 429, 429]
    assert app.decisions() == before + 1  # the replay, not the two 429s
    assert app.turned_away()["rate_limited"] == 2
    # another caller has a bucket of its own: it reaches the token check (a payments server, a tickets token)
    other = app.redeem(token, caller=app.token_of(PAYMENTS_SERVER), audience="payments", tool="payments.get_ticket")
    assert other.status_code == 403 and other.json()["error"] == "token_audience", other.text


def test_the_door_logs_at_most_once_per_interval(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = FrozenClock(NOW)
    dev = DevIssuer(KeySet.open_or_create(tmp_path / "dev", clock=clock), clock=clock)
    verifier = IdentityVerifier([dev.issuer_config()], clock=clock)
    metrics = Metrics()
    door = RedeemDoor(RedeemConfig(require_caller=True, callers=CALLERS, log_every_seconds=10), verifier.verify,
                      clock=clock, metrics=metrics)
    with caplog.at_level(logging.WARNING, logger="intentgate.redeem"):
        for _ in range(5):
            assert isinstance(door.admit(None, "192.0.2.7", "tickets"), TurnedAway)
        clock.advance(9)
        refused = door.admit(dev.mint(PAYMENTS_SERVER), "192.0.2.7", "tickets")
        assert isinstance(refused, TurnedAway) and refused.code is ReasonCode.REDEEMER_NOT_PERMITTED
        clock.advance(1)
        assert isinstance(door.admit("not.a.jwt", "192.0.2.8", "tickets"), TurnedAway)
        admitted = door.admit(dev.mint(TICKETS_SERVER), "192.0.2.7", "tickets")
    assert isinstance(admitted, AgentIdentity) and admitted.id == TICKETS_SERVER
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [  # the first at once; the next 10 s later, with what came in between
        "token redemptions turned away (counted, not in the decision log): 1 unauthenticated; "
        "the latest from address 192.0.2.7",
        "token redemptions turned away (counted, not in the decision log): 1 redeemer_not_permitted, "
        "5 unauthenticated; the latest from address 192.0.2.8",
    ]
    sample = metrics.registry.get_sample_value
    assert sample("intentgate_redeem_turned_away_total", {"reason": "unauthenticated"}) == 6
    assert sample("intentgate_redeem_turned_away_total", {"reason": "redeemer_not_permitted"}) == 1


def test_redeem_callers_are_checked_at_load() -> None:
    with pytest.raises(ConfigError, match="only be the whole last segment"):
        load_config(None, redeem={"callers": [{"subjects": ["spiffe://example.org/**/tool"], "audiences": ["x"]}]})
    with pytest.raises(ConfigError, match="callers.0.audiences"):
        load_config(None, redeem={"callers": [{"subjects": [TICKETS_SERVER], "audiences": []}]})
    with pytest.raises(ConfigError, match="rate"):
        load_config(None, redeem={"rate": 5})  # unknown keys are errors
