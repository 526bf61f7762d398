"""Hardening from the outside review, each reproduction a regression test plus a hostile-input
property test: resource URIs normalised before the policy (RFC 3986), non-finite JSON and huge
integers refused with a reason (never a 5xx), identity globs segment by segment and SPIFFE IDs
validated, and one error boundary for every MCP handler."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import regorus
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mcp import Client, MCPError
from pydantic import ValidationError

from intentgate.config import load_config
from intentgate.front import Front, _boundary
from intentgate.identity import AgentIdentity, DevIssuer, IdentityError
from intentgate.keys import KeySet
from intentgate.intents import Intent
from intentgate.names import RefusedName, glob_match, identity_glob_problem, normalise_uri, spiffe_id_problem
from intentgate.runtime import Runtime
from intentgate.upstreams import UpstreamPool
from tests.processes import free_port, serve, stop
from tests.test_front_http import agent_token
from tests.test_front_stdio import SUPPORT, make_gateway

ESCAPE = "spiffe://example.org/agent/support-x/../../ops-1/intentgate-admin"


# ----- 1. resource URIs ------------------------------------------------------------------------
@pytest.mark.parametrize("uri", ["tickets://TCK-1/..%2f..%2fcustomers", "tickets://TCK-1/%2E%2E%2Fcustomers",
                                 "tickets://TCK-1/%2e%2e/customers", "tickets://TCK-1/../customers",
                                 "tickets://TCK-1%00", "tickets://TCK-1%5c..%5ccustomers", "tickets://TCK-%zz"])
def test_traversal_in_a_resource_uri_is_refused(uri: str) -> None:
    with pytest.raises(RefusedName):
        normalise_uri(uri)


def test_unreserved_escapes_are_decoded_and_others_kept_upper_case() -> None:
    assert normalise_uri("tickets://TCK-%31%30%30%31") == "tickets://TCK-1001"
    assert normalise_uri("Tickets://q/a%3ab%7e") == "tickets://q/a%3Ab~"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab./%25fFeE2c0~:?#\\")) , max_size=24))
def test_normal_form_is_idempotent_and_never_climbs(tail: str) -> None:
    try:
        normal = normalise_uri("tickets://TCK-1/" + tail)
    except RefusedName:
        return
    assert normalise_uri(normal) == normal
    path = normal.split("?", 1)[0].split("#", 1)[0]
    assert not {".", ".."} & set(path.split("/"))
    assert "%2F" not in normal and "%00" not in normal and "%2E" not in normal.upper()


async def test_an_encoded_traversal_is_a_recorded_malformed_request_and_the_normal_form_is_read(
        tmp_path: Path) -> None:
    async with Client(make_gateway(tmp_path)) as client:
        with pytest.raises(MCPError) as refused:
            await client.read_resource("tickets+tickets://TCK-1/..%2f..%2fcustomers%2fall")
        assert refused.value.error.code == -32010
        assert refused.value.error.data["reasons"] == ["malformed_request:uri"]
        # an unreserved character written as an escape is read under its normal form
        result = await client.read_resource("tickets+tickets://TCK-%31")
        assert [c.uri for c in result.contents] == ["tickets+tickets://TCK-1"]
    db = sqlite3.connect(tmp_path / "intentgate.db")
    rows = db.execute("SELECT tool, outcome, reasons FROM decisions WHERE kind = 'resources/read' ORDER BY seq").fetchall()
    db.close()
    assert rows == [("tickets://TCK-1/..%2f..%2fcustomers%2fall", "deny", '["malformed_request:uri"]'),
                    ("tickets://TCK-1", "allow", "[]")]


# ----- 3. identity globs and SPIFFE IDs -------------------------------------------------------
def test_a_star_stays_within_a_segment() -> None:
    assert glob_match("spiffe://example.org/agent/support-*", "spiffe://example.org/agent/support-1")
    assert not glob_match("spiffe://example.org/agent/support-*", ESCAPE)
    assert glob_match("spiffe://example.org/agent/**", ESCAPE)  # ** crosses, as written (SPIFFE checks refuse it)


SEGMENTS = st.text(alphabet=st.sampled_from(list("ab-/.*?")), max_size=12)


def test_a_double_star_only_ends_an_identity_glob() -> None:
    """Elsewhere OPA and regorus disagree on it (OPA: `a-**` matches `a-b/c`; regorus: not)."""
    assert identity_glob_problem("spiffe://example.org/agent/**") is None and identity_glob_problem("**") is None
    for pattern in ("spiffe://example.org/agent/support-**", "spiffe://example.org/**/x", "a**"):
        assert identity_glob_problem(pattern) is not None
    with pytest.raises(ValidationError, match="whole last segment"):
        Intent.model_validate({"name": "x", "version": "1", "agents": ["spiffe://e/agent-**"], "start": ["a"],
                               "steps": {"a": {"tool": "t.a"}}})


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=SEGMENTS, value=st.text(alphabet=st.sampled_from(list("ab-/.")), max_size=12))
def test_identity_globs_agree_with_the_policys_glob_match(pattern: str, value: str) -> None:
    """The gateway's listings and the Rego policy (glob.match with "/") decide alike, for every
    pattern an intent may hold."""
    assume(identity_glob_problem(pattern) is None)
    engine = regorus.Engine()
    engine.set_input_json(json.dumps({"p": pattern, "v": value}))
    rego = engine.eval_query('glob.match(input.p, ["/"], input.v)')["result"][0]["expressions"][0]["value"]
    assert glob_match(pattern, value) == rego


@pytest.mark.parametrize("sub", [ESCAPE, "spiffe://example.org/agent//x", "spiffe://example.org/agent/%2e%2e",
                                 "spiffe://Example.org/agent/x", "spiffe://example.org", "spiffe://example.org/a?b"])
def test_invalid_spiffe_ids_are_refused(sub: str) -> None:
    assert spiffe_id_problem(sub) is not None


@pytest.mark.slow
def test_a_token_for_an_escaping_spiffe_id_is_unauthenticated(http_gateway: tuple[str, str, Path]) -> None:
    base, token, data_dir = http_gateway
    issuer = DevIssuer(KeySet.open_or_create(data_dir / "keys" / "agent-issuer"))
    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}

    def initialize(sub: str) -> httpx2.Response:
        return httpx2.post(base + "/mcp", json=hello, timeout=30, headers={
            "Authorization": f"Bearer {issuer.mint(sub)}", "Accept": "application/json, text/event-stream"})

    assert initialize(SUPPORT).status_code == 200
    refused = initialize(ESCAPE)  # `support-*` would have admitted it: `*` crossed "/"
    assert refused.status_code == 401 and refused.json()["error"] == "unauthenticated"


# ----- 4. one error boundary ------------------------------------------------------------------
async def test_the_boundary_sends_agents_only_a_reason_code() -> None:
    async def leaky(ctx: object, params: object) -> None:
        raise RuntimeError("connection to postgresql://admin:hunter2@db/prod failed")

    with pytest.raises(MCPError) as refused:
        await _boundary(leaky)(None, None)
    assert refused.value.error.message == "internal error"
    assert refused.value.error.data == {"reasons": ["internal_error"]}
    assert "hunter2" not in str(refused.value.error)


async def test_every_handler_says_only_unauthenticated_when_the_identity_fails(tmp_path: Path) -> None:
    """The front in process, over the SDK's in-memory transport, with an identity check that
    fails with internal text (as a verifier's message would): no handler lets it through."""
    make_gateway(tmp_path)
    rt = await Runtime.open(load_config(tmp_path / "intentgate.yaml"))
    pool = UpstreamPool([])

    async def identify(ctx: object) -> AgentIdentity:
        raise IdentityError('untrusted issuer \'evil"}\' (kid k-1, key /etc/intentgate/keys)')

    try:
        async with Client(Front(rt, pool, identify).server) as client:
            for call in (client.list_tools(), client.list_resources(), client.list_prompts(),
                         client.read_resource("tickets+tickets://TCK-1"), client.get_prompt("tickets__x")):
                with pytest.raises(MCPError) as refused:
                    await call
                assert refused.value.error.message == "no valid workload identity"
                assert refused.value.error.data == {"reasons": ["unauthenticated"]}
            r = await client.call_tool("tickets__get_ticket", {"ticket_id": "TCK-1"})
            assert r.is_error and "evil" not in r.content[0].text and "/etc" not in r.content[0].text
    finally:
        await pool.aclose()
        await rt.aclose()


# ----- 2. non-finite JSON and huge integers over HTTP -----------------------------------------
@pytest.fixture(scope="module")
def http_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    tmp_path = tmp_path_factory.mktemp("hardening")
    make_gateway(tmp_path)
    proc = serve(tmp_path / "intentgate.yaml", port := free_port(), tmp_path / "gateway.log")
    try:
        yield f"http://127.0.0.1:{port}", agent_token(tmp_path), tmp_path
    finally:
        stop(proc)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/v1/tokens/redeem", "/v1/decide", "/v1/tasks", "/v1/review/grants"])
@pytest.mark.parametrize("body", [b"NaN", b'{"a": -Infinity}', b'{"n": 1e999}', b'{"n": 123456789012345678901234}'])
def test_non_finite_numbers_and_huge_integers_are_a_400_with_a_reason(http_gateway: tuple[str, str, Path],
                                                                      path: str, body: bytes) -> None:
    base, token, _ = http_gateway
    r = httpx2.post(base + path, content=body, timeout=30, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream"})
    assert r.status_code == 400, r.text
    assert r.json()["reasons"][0] in ("malformed_request:non_finite", "malformed_request:integer")


JSON_LEAVES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-2**80, max_value=2**80),
                        st.text(max_size=5), st.booleans(), st.none())


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.recursive(JSON_LEAVES, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
    st.text(max_size=4), kids, max_size=3), max_leaves=8),
       path=st.sampled_from(["/v1/tokens/redeem", "/v1/decide", "/mcp", "/v1/tasks", "/v1/review/grants"]))
def test_no_json_body_gets_a_server_error(http_gateway: tuple[str, str, Path], doc: object, path: str) -> None:
    base, token, _ = http_gateway
    r = httpx2.post(base + path, content=json.dumps(doc).encode(), timeout=30, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream"})
    assert r.status_code < 500, r.text
