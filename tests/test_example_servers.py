"""The example tool servers in ``agents_examples/servers``, each a real stdio subprocess.

Payments gets real action tokens minted by ``ActionTokenIssuer`` on the real clock (the
server checks expiry against its own clock), with its JWKS from a file or from a small HTTP
server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from mcp import Client, StdioServerParameters

from intentgate.canonical import arguments_sha256
from intentgate.clock import FrozenClock
from intentgate.keys import KeySet
from intentgate.tokens import ActionTokenIssuer
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

AGENT = "spiffe://example.org/agent/support-1"


def server(name: str, data_dir: Path, **env: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", f"agents_examples.servers.{name}", "--data-dir", str(data_dir)],
        cwd=str(ROOT), env={**os.environ, **env},
    )


async def call(client: Client, tool: str, args: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    """The structured result, with ``is_error``; checks the text rendering says the same."""
    result = await client.call_tool(tool, args, meta={"intentgate/token": token} if token else None)
    out = dict(result.structured_content or {})
    text = result.content[0].text  # type: ignore[union-attr]
    if result.is_error:
        assert text.startswith(f"refused: {out['refused']}" if "refused" in out else f"error: {out['error']}: ")
    else:
        assert json.loads(text) == out
    return {**out, "is_error": bool(result.is_error)}


def mint(issuer: ActionTokenIssuer, tool: str, args: dict[str, Any], *, upstream: str = "payments") -> str:
    return issuer.mint(
        agent=AGENT, task_id="tsk_example", intent="refund-order", step="refund", upstream=upstream,
        tool=f"{upstream}.{tool}", arguments_sha256=arguments_sha256(args), task_expires_at=time.time() + 600,
    ).token


@asynccontextmanager
async def background(params: StdioServerParameters) -> AsyncIterator[Client]:
    """A client session living in its own task, so a module-scoped fixture can share it.

    The SDK's client enters anyio cancel scopes, which must be left by the task that entered
    them; pytest-asyncio sets a fixture up and tears it down in different tasks.
    """
    ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def hold() -> None:
        try:
            async with Client(params) as client:
                ready.set_result(client)
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    task = asyncio.create_task(hold())
    try:
        yield await ready
    finally:
        stop.set()
        await task


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def orders(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Client]:
    async with background(server("orders", tmp_path_factory.mktemp("orders"))) as client:
        yield client


# ----- orders ---------------------------------------------------------------------------------


async def test_orders_lists_real_json_schemas(orders: Client) -> None:
    tools = {t.name: t for t in (await orders.list_tools()).tools}
    assert set(tools) == {"get_order", "list_orders"}
    schema = tools["list_orders"].input_schema
    assert schema["required"] == ["customer_email"] and schema["properties"]["page"]["type"] == "integer"
    assert schema["additionalProperties"] is False
    assert tools["get_order"].annotations is not None and tools["get_order"].annotations.read_only_hint


async def test_get_order_returns_the_seeded_orders(orders: Client) -> None:
    first = await call(orders, "get_order", {"order_id": "ORD-5001"})
    assert (first["total"], first["currency"], first["customer_email"]) == (42.5, "EUR", "alice.martin@example.com")
    assert first["items"][0]["name"].startswith("Ceramic mug set")
    large = await call(orders, "get_order", {"order_id": "ORD-5003"})
    assert (large["total"], large["currency"]) == (1800.0, "EUR")
    missing = await call(orders, "get_order", {"order_id": "ORD-9999"})
    assert missing["is_error"] and missing["error"] == "unknown_order"
    bad = await call(orders, "get_order", {"order_id": "5001; DROP TABLE orders"})
    assert bad["is_error"] and bad["error"] == "invalid_arguments"


async def test_list_orders_pages_five_at_a_time_newest_first(orders: Client) -> None:
    email = "alice.martin@example.com"
    pages = [await call(orders, "list_orders", {"customer_email": email, "page": p}) for p in (1, 2, 3, 4)]
    assert [len(p["orders"]) for p in pages] == [5, 5, 2, 0]
    assert [p["next_page"] for p in pages] == [2, 3, None, None]
    assert pages[0]["total_orders"] == 12 and pages[0]["total_pages"] == 3
    ids = [o["order_id"] for p in pages for o in p["orders"]]
    assert len(set(ids)) == 12 and ids[0] == "ORD-5001" and ids[-1] == "ORD-5010"
    dates = [o["placed_at"] for p in pages for o in p["orders"]]
    assert dates == sorted(dates, reverse=True)
    default = await call(orders, "list_orders", {"customer_email": email})
    assert default["orders"] == pages[0]["orders"]
    nobody = await call(orders, "list_orders", {"customer_email": "nobody@example.com"})
    assert nobody["orders"] == [] and nobody["total_pages"] == 0
    zero = await call(orders, "list_orders", {"customer_email": email, "page": 0})
    assert zero["is_error"] and zero["error"] == "invalid_arguments"


# ----- tickets, email, secrets ----------------------------------------------------------------


async def test_tickets_seed_comments_persist_across_restarts(tmp_path: Path) -> None:
    async with Client(server("tickets", tmp_path)) as tickets:
        legit = await call(tickets, "get_ticket", {"ticket_id": "TCK-1001"})
        assert (legit["order_id"], legit["customer_email"], legit["status"]) == (
            "ORD-5001", "alice.martin@example.com", "open")
        assert "42.50 EUR" in legit["body"] and legit["comments"] == []
        injected = await call(tickets, "get_ticket", {"ticket_id": "TCK-1002"})
        assert injected["order_id"] == "ORD-5002" and "ops@evil.example" in injected["body"]
        added = await call(tickets, "add_comment", {"ticket_id": "TCK-1001", "body": "Refunded 42.50 EUR."})
        assert not added["is_error"]
        again = await call(tickets, "get_ticket", {"ticket_id": "TCK-1001"})
        assert [(c["comment_id"], c["body"]) for c in again["comments"]] == [
            (added["comment_id"], "Refunded 42.50 EUR.")]
        unknown = await call(tickets, "add_comment", {"ticket_id": "TCK-999", "body": "x"})
        assert unknown["is_error"] and unknown["error"] == "unknown_ticket"
    async with Client(server("tickets", tmp_path)) as tickets:  # same data dir: kept, not re-seeded
        after = await call(tickets, "get_ticket", {"ticket_id": "TCK-1001"})
        assert [c["body"] for c in after["comments"]] == ["Refunded 42.50 EUR."]


async def test_email_send_lands_in_the_outbox(tmp_path: Path) -> None:
    async with Client(server("email", tmp_path)) as email:
        assert (await call(email, "list_outbox", {}))["messages"] == []
        sent = await call(email, "send", {"to": "alice.martin@example.com", "subject": "Refund", "body": "Done."})
        assert sent["status"] == "queued" and sent["message_id"] == "MSG-000001"
        bad = await call(email, "send", {"to": "not an address", "subject": "x", "body": "y"})
        assert bad["is_error"] and bad["error"] == "invalid_arguments"
        outbox = await call(email, "list_outbox", {})
        assert [(m["to"], m["subject"], m["body"]) for m in outbox["messages"]] == [
            ("alice.martin@example.com", "Refund", "Done.")]


async def test_secrets_describe_never_shows_material_and_rotate_bumps_version(tmp_path: Path) -> None:
    seeded_material = "seed-" + hashlib.sha256(b"billing-api/3").hexdigest()
    async with Client(server("secrets", tmp_path)) as secrets:
        before = await call(secrets, "describe_credential", {"service": "billing-api"})
        assert before["current_version"] == 3 and [v["version"] for v in before["valid_versions"]] == [3]
        rotated = await call(secrets, "rotate_credential", {"service": "billing-api", "grace_period_seconds": 3600})
        assert (rotated["previous_version"], rotated["current_version"]) == (3, 4)
        after = await call(secrets, "describe_credential", {"service": "billing-api"})
        assert after["current_version"] == 4 and [v["version"] for v in after["valid_versions"]] == [4, 3]
        assert after["valid_versions"][1]["valid_until"] == rotated["previous_valid_until"]
        immediate = await call(secrets, "rotate_credential", {"service": "billing-api", "grace_period_seconds": 0})
        assert immediate["current_version"] == 5
        assert [v["version"] for v in (await call(secrets, "describe_credential", {"service": "billing-api"}))
                ["valid_versions"]] == [5, 3]  # v4 expired at once, v3 still in its grace period
        unknown = await call(secrets, "describe_credential", {"service": "no-such-service"})
        assert unknown["is_error"] and unknown["error"] == "unknown_service"
    db = sqlite3.connect(tmp_path / "secrets.db")
    materials = {m for (m,) in db.execute("SELECT material FROM versions WHERE service = 'billing-api'")}
    db.close()
    assert seeded_material in materials and len(materials) == 3  # the material is in the vault ...
    assert seeded_material not in json.dumps([before, after])  # ... and never in a result


# ----- payments: every call needs a valid, unused action token ----------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    return KeySet.open_or_create(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def issuer(keys: KeySet) -> ActionTokenIssuer:
    return ActionTokenIssuer(keys)  # the real clock: the server checks expiry against its own


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def payments(tmp_path_factory: pytest.TempPathFactory, keys: KeySet) -> AsyncIterator[Client]:
    jwks = tmp_path_factory.mktemp("jwks") / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks()))
    params = server("payments", tmp_path_factory.mktemp("payments"), INTENTGATE_JWKS=str(jwks))
    async with background(params) as client:
        yield client


async def refunds(payments: Client, issuer: ActionTokenIssuer, order_id: str) -> dict[str, Any]:
    args = {"order_id": order_id}
    return await call(payments, "list_refunds", args, mint(issuer, "list_refunds", args))


async def test_refund_without_a_token_is_refused_and_not_made(payments: Client, issuer: ActionTokenIssuer) -> None:
    args = {"order_id": "ORD-5002", "amount": 10, "currency": "EUR"}
    assert await call(payments, "refund", args) == {"refused": "invalid_token", "is_error": True}
    garbage = await call(payments, "refund", args, "not-a-jwt")
    assert garbage["refused"] == "invalid_token"
    assert (await call(payments, "list_refunds", {"order_id": "ORD-5002"}))["refused"] == "invalid_token"
    listed = await refunds(payments, issuer, "ORD-5002")
    assert listed["refunds"] == [] and listed["remaining_refundable"] == 129.0


async def test_refund_with_a_valid_token_is_made_once(payments: Client, issuer: ActionTokenIssuer) -> None:
    args = {"order_id": "ORD-5001", "amount": 42.5, "currency": "EUR", "reason": "mug set arrived broken"}
    token = mint(issuer, "refund", args)
    made = await call(payments, "refund", args, token)
    assert not made["is_error"], made
    assert (made["status"], made["amount"], made["remaining_refundable"]) == ("succeeded", 42.5, 0.0)
    assert made["authorized_by"]["agent"] == AGENT and made["authorized_by"]["task"] == "tsk_example"
    assert await call(payments, "refund", args, token) == {"refused": "token_replayed", "is_error": True}
    listed = await refunds(payments, issuer, "ORD-5001")
    assert [(r["refund_id"], r["amount"], r["reason"]) for r in listed["refunds"]] == [
        (made["refund_id"], 42.5, "mug set arrived broken")]
    assert listed["refunds"][0]["authorized_by"]["token_id"] == made["authorized_by"]["token_id"]


async def test_token_bound_to_other_arguments_audience_or_tool_is_refused(
    payments: Client, issuer: ActionTokenIssuer, keys: KeySet
) -> None:
    small = {"order_id": "ORD-5003", "amount": 10, "currency": "EUR"}
    large = {**small, "amount": 999}
    assert (await call(payments, "refund", large, mint(issuer, "refund", small)))["refused"] == "token_arguments"
    other = mint(issuer, "refund", large, upstream="orders")
    assert (await call(payments, "refund", large, other))["refused"] == "token_audience"
    for_listing = mint(issuer, "list_refunds", large)
    assert (await call(payments, "refund", large, for_listing))["refused"] == "token_tool"
    expired = ActionTokenIssuer(keys, clock=FrozenClock(time.time() - 3600)).mint(
        agent=AGENT, task_id="tsk_example", intent="refund-order", step="refund", upstream="payments",
        tool="payments.refund", arguments_sha256=arguments_sha256(large), task_expires_at=time.time(),
    ).token
    assert (await call(payments, "refund", large, expired))["refused"] == "token_expired"
    foreign = ActionTokenIssuer(KeySet.open_or_create(keys.directory.parent / "foreign-keys"))
    assert (await call(payments, "refund", large, mint(foreign, "refund", large)))["refused"] == "invalid_token"
    assert (await refunds(payments, issuer, "ORD-5003"))["refunds"] == []


@pytest.mark.parametrize(("args", "code"), [
    ({"order_id": "ORD-9999", "amount": 1, "currency": "EUR"}, "unknown_order"),
    ({"order_id": "ORD-5004", "amount": 5, "currency": "EUR"}, "currency_mismatch"),
    ({"order_id": "ORD-5003", "amount": 1800.01, "currency": "EUR"}, "amount_exceeds_refundable"),
    ({"order_id": "ORD-5003", "amount": 0.001, "currency": "EUR"}, "invalid_amount"),
    ({"order_id": "ORD-5003", "amount": -5, "currency": "EUR"}, "invalid_arguments"),
])
async def test_refund_business_rules(
    payments: Client, issuer: ActionTokenIssuer, args: dict[str, Any], code: str
) -> None:
    failed = await call(payments, "refund", args, mint(issuer, "refund", args))
    assert failed["is_error"] and failed["error"] == code, failed


async def test_partial_refunds_add_up_to_the_captured_amount(payments: Client, issuer: ActionTokenIssuer) -> None:
    def refund(value: float) -> dict[str, Any]:
        return {"order_id": "ORD-5004", "amount": value, "currency": "USD"}

    first = await call(payments, "refund", refund(70.1), mint(issuer, "refund", refund(70.1)))
    assert first["remaining_refundable"] == pytest.approx(4.9)
    over = await call(payments, "refund", refund(5), mint(issuer, "refund", refund(5)))
    assert over["error"] == "amount_exceeds_refundable" and "4.90 USD" in over["message"]
    rest = await call(payments, "refund", refund(4.9), mint(issuer, "refund", refund(4.9)))
    assert rest["remaining_refundable"] == 0.0
    listed = await refunds(payments, issuer, "ORD-5004")
    assert [r["amount"] for r in listed["refunds"]] == [70.1, 4.9] and listed["refunded"] == 75.0


# ----- payments with its JWKS served over HTTP -----------------------------------------------------


class JwksServer:
    """The gateway's ``/.well-known/jwks.json`` on 127.0.0.1, counting fetches."""

    def __init__(self, keys: KeySet) -> None:
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path != "/.well-known/jwks.json":
                    self.send_error(404)
                    return
                outer.fetches += 1
                body = json.dumps(keys.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def jwks_server(tmp_path: Path) -> Iterator[tuple[JwksServer, KeySet]]:
    keys = KeySet.open_or_create(tmp_path / "rotating-keys")
    with JwksServer(keys) as httpd:
        yield httpd, keys


async def test_jwks_by_url_follows_key_rotation(tmp_path: Path, jwks_server: tuple[JwksServer, KeySet]) -> None:
    httpd, keys = jwks_server
    issuer = ActionTokenIssuer(keys)
    args = {"order_id": "ORD-5002", "amount": 20, "currency": "EUR"}
    async with Client(server("payments", tmp_path, INTENTGATE_JWKS=httpd.url)) as payments:
        assert not (await call(payments, "refund", args, mint(issuer, "refund", args)))["is_error"]
        assert httpd.fetches == 1
        keys.rotate()  # a token from the new key names a kid the server has not seen: it refetches once
        rotated = await call(payments, "refund", args, mint(issuer, "refund", args))
        assert not rotated["is_error"], rotated
        assert httpd.fetches == 2 and rotated["remaining_refundable"] == 89.0
        foreign = ActionTokenIssuer(KeySet.open_or_create(tmp_path / "foreign-keys"))
        for _ in range(3):  # unknown kids right after a refetch do not hit the gateway again
            assert (await call(payments, "refund", args, mint(foreign, "refund", args)))["refused"] == "invalid_token"
        assert httpd.fetches == 2
