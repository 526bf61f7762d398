"""Policy engines: one suite both engines pass (the OPA server where one is reachable).

The ``engine``/``make`` fixtures give the embedded engine and an OPA-server engine on a real
OPA (``opa_url``: skipped without an OPA binary, required in CI).  Below the suite: the
contract model, policy-dir loading, the OPA engine's fail-closed behaviour on answers a real
OPA never gives, the Rego test runner, and the CLI.
"""

from __future__ import annotations

import copy
import gc
import http.server
import json
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from typer.testing import CliRunner

from intentgate.cli import app
from intentgate.errors import ConfigError, PolicyError
from intentgate.policy import (
    EmbeddedEngine,
    OpaServerEngine,
    PolicyEngine,
    PolicyResult,
    load_policy_dir,
    make_engine,
    parse_result,
    run_rego_tests,
)
from tests.conftest import INTENTS_DIR, POLICY_DIR

MONDAY_10_MS = 1_799_056_800_000  # Monday 2027-01-04 10:00:00 UTC
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
GARBAGE: list[Any] = [None, True, 0, -1, 1.5, 1e300, "", "x", [], {}, ["a"], {"a": 1}]


def base_input(**over: Any) -> dict:
    doc = {
        "agent": {"id": "spiffe://example.org/agent/support-1", "claims": {}},
        "intent": {"name": "refund-order", "version": "3", "params": {"order_id": "ORD-7", "ticket_id": "TCK-1"}},
        "task": {"id": "tsk_1", "started_at": "2027-01-04T09:59:00.000000Z", "expires_at": "2027-01-04T10:14:00.000000Z",
                 "history": [{"step": "read_ticket", "tool": "tickets.get_ticket", "decision": "allow"}]},
        "call": {"upstream": "orders", "tool": "get_order", "step": "lookup", "arguments": {"order_id": "ORD-7"}},
        "workflow": {"ok": True, "violations": []},
        "context": {"now": "2027-01-04T10:00:00.000000Z", "now_ms": MONDAY_10_MS, "environment": "prod",
                    "mode": "enforce"},
    }
    doc.update(over)
    return doc


def refund_input(amount: Any, currency: Any = "EUR") -> dict:
    return base_input(call={"upstream": "payments", "tool": "refund", "step": "refund",
                            "arguments": {"order_id": "ORD-7", "amount": amount, "currency": currency}})


def rotation_input(now_ms: Any = MONDAY_10_MS, environment: Any = "prod") -> dict:
    return base_input(
        agent={"id": "spiffe://example.org/agent/ops-1", "claims": {}},
        intent={"name": "rotate-credential", "version": "2", "params": {"service": "billing"}},
        call={"upstream": "secrets", "tool": "rotate_credential", "step": "rotate",
              "arguments": {"service": "billing", "grace_period_seconds": 600}},
        context={"now": "…", "now_ms": now_ms, "environment": environment, "mode": "enforce"},
    )


def copy_policy(tmp_path: Path) -> Path:
    dst = tmp_path / "opa"
    shutil.copytree(POLICY_DIR, dst)
    return dst


def write_policy(root: Path, body: str) -> Path:
    """A one-module policy dir at ``root`` (package intentgate)."""
    (root / "intentgate").mkdir(parents=True, exist_ok=True)
    (root / "intentgate" / "p.rego").write_text(f"package intentgate\n\nimport rego.v1\n\n{body}\n")
    return root


# ----- the suite both engines pass ------------------------------------------------------------

MakeEngine = Callable[..., PolicyEngine]


@pytest.fixture(params=["embedded", pytest.param("opa", marks=pytest.mark.opa)])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[MakeEngine]:
    """Build engines of one kind; closes them afterwards."""
    extra = {"url": request.getfixturevalue("opa_url")} if request.param == "opa" else {}
    built: list[PolicyEngine] = []

    def build(policy_dir: Path, intents_doc: dict, **kw: Any) -> PolicyEngine:
        eng = make_engine(request.param, policy_dir=policy_dir, intents_doc=intents_doc, **extra, **kw)
        built.append(eng)
        return eng

    yield build
    for eng in built:
        await eng.aclose()


@pytest.fixture
def engine(make: MakeEngine, registry) -> PolicyEngine:
    return make(POLICY_DIR, registry.data_document())


async def test_conformant_call_is_allowed(engine: PolicyEngine) -> None:
    r = await engine.evaluate(base_input())
    assert r == PolicyResult(allow=True, reasons=[], hold=False, ttl_seconds=30)


@pytest.mark.parametrize("workflow", [
    {"ok": False, "violations": ["step_out_of_order"]},
    {"ok": False, "violations": ["argument_constraint:amount"]},
    {"ok": "true", "violations": []},
    {"ok": 1},
    {"violations": []},
    None,
])
async def test_workflow_must_be_ok(engine: PolicyEngine, workflow: Any) -> None:
    doc = base_input(workflow=workflow)
    if workflow is None:
        del doc["workflow"]
    r = await engine.evaluate(doc)
    assert not r.allow and r.reasons == ["workflow_violation"]


async def test_unknown_intent(engine: PolicyEngine) -> None:
    r = await engine.evaluate(base_input(intent={"name": "exfiltrate", "version": "1", "params": {}}))
    assert not r.allow and r.reasons == ["unknown_intent"]


@pytest.mark.parametrize(("agent", "intent", "allowed"), [
    ("spiffe://example.org/agent/support-1", "refund-order", True),
    ("spiffe://example.org/agent/support-eu/7", "refund-order", False),  # * stays within a "/" segment
    ("spiffe://example.org/agent/triage", "triage-ticket", True),  # the intent's second pattern
    ("spiffe://example.org/agent/triage", "refund-order", False),
    ("spiffe://example.org/agent/ops-1", "refund-order", False),
    ("spiffe://evil.example/agent/support-1", "refund-order", False),
    ("spiffe://example.org/agent/support", "refund-order", False),
    ("", "refund-order", False),
])
async def test_agent_must_match_the_intent(engine: PolicyEngine, agent: str, intent: str, allowed: bool) -> None:
    r = await engine.evaluate(base_input(agent={"id": agent, "claims": {}}, intent={"name": intent}))
    assert r.allow is allowed
    assert r.reasons == ([] if allowed else ["agent_not_permitted"])


@pytest.mark.parametrize(("amount", "currency", "allow", "hold", "reasons"), [
    (30, "EUR", True, False, []),
    (1000, "EUR", True, False, []),  # at the hold threshold: not held
    (1000.01, "EUR", True, True, ["large_refund"]),
    (2500, "EUR", True, True, ["large_refund"]),
    (3000, "EUR", True, True, ["large_refund"]),  # at the maximum: allowed
    (3000.01, "EUR", False, True, ["large_refund", "refund_over_limit"]),
    (3200, "USD", True, True, ["large_refund"]),
    (3200, "GBP", False, True, ["large_refund", "refund_over_limit"]),
    (10, "JPY", False, False, ["refund_currency_unsupported"]),
    (10, None, False, False, ["refund_currency_unsupported"]),
    (0, "EUR", False, False, ["refund_amount_invalid"]),
    (-5, "EUR", False, False, ["refund_amount_invalid"]),
    ("10", "EUR", False, False, ["refund_amount_invalid"]),
])
async def test_refund_limits_and_holds(engine: PolicyEngine, amount, currency, allow, hold, reasons) -> None:
    r = await engine.evaluate(refund_input(amount, currency))
    assert (r.allow, r.hold, r.reasons, r.ttl_seconds) == (allow, hold, reasons, 15)


@pytest.mark.parametrize(("now_ms", "environment", "inside"), [
    (MONDAY_10_MS, "prod", True),
    (MONDAY_10_MS - 2 * HOUR_MS, "prod", True),  # Monday 08:00:00.000 opens
    (MONDAY_10_MS - 2 * HOUR_MS - 1, "prod", False),  # 07:59:59.999
    (MONDAY_10_MS + 8 * HOUR_MS - 1, "prod", True),  # 17:59:59.999
    (MONDAY_10_MS + 8 * HOUR_MS, "prod", False),  # 18:00:00.000 closes
    (MONDAY_10_MS + 4 * DAY_MS, "prod", True),  # Friday 10:00
    (MONDAY_10_MS - 2 * DAY_MS, "prod", False),  # Saturday 10:00
    (MONDAY_10_MS - DAY_MS, "prod", False),  # Sunday 10:00
    (MONDAY_10_MS - 2 * DAY_MS, "staging", True),  # outside prod: any time
    (MONDAY_10_MS - 2 * DAY_MS, None, False),  # no environment counts as prod
    (MONDAY_10_MS + 0.5, "prod", False),  # not whole milliseconds
    ("2027-01-04T10:00:00Z", "prod", False),
    (None, "prod", False),
])
async def test_rotation_change_window(engine: PolicyEngine, now_ms: Any, environment: Any, inside: bool) -> None:
    r = await engine.evaluate(rotation_input(now_ms, environment))
    assert r.allow is inside
    assert r.reasons == ([] if inside else ["outside_change_window"])


@pytest.mark.parametrize("garbage", [{}, {"agent": 1}, {"workflow": {"ok": "yes"}}, {"call": []},
                                     {"input": {"workflow": {"ok": True}}}, {"workflow": {"ok": True}}])
async def test_garbage_input_denies(engine: PolicyEngine, garbage: dict) -> None:
    r = await engine.evaluate(garbage)
    assert r.allow is False and r.reasons and r.ttl_seconds in (15, 30)


async def test_any_malformed_field_still_answers(engine: PolicyEngine) -> None:
    """Every field of a refund and of a rotation, replaced by a value of the wrong shape."""
    answered = 0
    for good in (refund_input(2500), rotation_input()):
        for path in _leaf_paths(good):
            for value in GARBAGE:
                doc = copy.deepcopy(good)
                _set(doc, path, value)
                r = await engine.evaluate(doc)  # never a PolicyError
                if path in MUST_DENY and not (path == ("workflow", "ok") and value is True):
                    assert not r.allow, (path, value, r)
                answered += 1
    assert answered > 300


MUST_DENY = {("workflow",), ("workflow", "ok"), ("intent",), ("intent", "name"), ("agent",), ("agent", "id")}


def _leaf_paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in [prefix + (k,), *_leaf_paths(v, prefix + (k,))]]
    return []


def _set(doc: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


async def test_revision_is_content_addressed(make: MakeEngine, registry) -> None:
    a = make(POLICY_DIR, registry.data_document())
    b = make(POLICY_DIR, registry.data_document())
    assert a.revision == b.revision and len(a.revision) == 16
    assert make(POLICY_DIR, {}).revision != a.revision


async def test_set_intents_replaces_the_intents(make: MakeEngine, registry) -> None:
    eng = make(POLICY_DIR, registry.data_document())
    before = eng.revision
    assert (await eng.evaluate(base_input())).allow
    others = {k: v for k, v in registry.data_document().items() if k != "refund-order"}
    eng.set_intents(others)
    assert eng.revision != before
    assert (await eng.evaluate(base_input())).reasons == ["unknown_intent"]


async def test_reload_applies_an_edit(make: MakeEngine, tmp_path: Path, registry) -> None:
    pdir = copy_policy(tmp_path)
    eng = make(pdir, registry.data_document(), reload_interval=0)
    before = eng.revision
    assert (await eng.evaluate(refund_input(2000))).allow
    assert await eng.reload_if_changed() is False  # nothing changed yet
    data_file = pdir / "intentgate" / "data.json"
    data = json.loads(data_file.read_text())
    data["limits"]["refund"]["max"]["EUR"] = 1500
    data_file.write_text(json.dumps(data))
    assert await eng.reload_if_changed() is True
    assert eng.revision != before
    r = await eng.evaluate(refund_input(2000))
    assert not r.allow and "refund_over_limit" in r.reasons
    assert await eng.reload_if_changed() is False


async def test_reload_picks_up_new_and_removed_modules(make: MakeEngine, tmp_path: Path, registry) -> None:
    pdir = copy_policy(tmp_path)
    eng = make(pdir, registry.data_document(), reload_interval=0)
    extra = pdir / "intentgate" / "lockdown.rego"
    extra.write_text('package intentgate\n\nimport rego.v1\n\ndeny contains "lockdown" if true\n')
    assert await eng.reload_if_changed() is True
    assert (await eng.evaluate(base_input())).reasons == ["lockdown"]
    extra.unlink()
    assert await eng.reload_if_changed() is True
    assert (await eng.evaluate(base_input())).allow


async def test_broken_edit_keeps_the_running_policy(make: MakeEngine, tmp_path: Path, registry, caplog) -> None:
    pdir = copy_policy(tmp_path)
    eng = make(pdir, registry.data_document(), reload_interval=0)
    before = eng.revision
    (pdir / "intentgate" / "refunds.rego").write_text("package intentgate\n\ndeny contains if {{{\n")
    assert await eng.reload_if_changed() is False
    assert eng.revision == before
    assert "policy reload failed" in caplog.text and "refunds.rego" in caplog.text
    assert (await eng.evaluate(refund_input(3500))).reasons == ["large_refund", "refund_over_limit"]
    (pdir / "intentgate" / "data.json").write_text("{not json")
    assert await eng.reload_if_changed() is False
    assert eng.revision == before


async def test_reload_is_rate_limited(make: MakeEngine, tmp_path: Path, registry) -> None:
    pdir = copy_policy(tmp_path)
    eng = make(pdir, registry.data_document(), reload_interval=3600)
    (pdir / "intentgate" / "extra.rego").write_text('package intentgate\n\ndeny contains "always" if true\n')
    assert await eng.reload_if_changed() is False  # looked again only after the interval
    assert (await eng.evaluate(base_input())).allow
    assert await eng.reload_if_changed(force=True) is True
    assert not (await eng.evaluate(base_input())).allow


@pytest.mark.parametrize("body", [
    'decision := "allow"',
    'decision := true',
    'decision := {"allow": "yes", "reasons": [], "hold": false, "ttl_seconds": 30}',
    'decision := {"allow": true, "reasons": [], "hold": false, "ttl_seconds": 30, "extra": 1}',
    'decision := {"allow": true, "reasons": [1], "hold": false, "ttl_seconds": 30}',
    'decision := {"allow": true, "reasons": [], "ttl_seconds": 30}',
    'decision := {"allow": true, "reasons": [], "hold": false, "ttl_seconds": 0}',
    'decision := {"allow": true, "reasons": [], "hold": false, "ttl_seconds": 1.5}',
    'decision := {"allow": true, "reasons": [], "hold": false} if input.never',
])
async def test_off_contract_or_undefined_decision_is_a_policy_error(make: MakeEngine, tmp_path: Path,
                                                                     body: str) -> None:
    eng = make(write_policy(tmp_path / "opa", body), {})
    with pytest.raises(PolicyError):
        await eng.evaluate(base_input())


# ----- the contract model ---------------------------------------------------------------------


def test_parse_result_sorts_reasons_and_accepts_a_null_ttl() -> None:
    r = parse_result({"allow": False, "reasons": ["b", "a"], "hold": False, "ttl_seconds": None})
    assert r.reasons == ["a", "b"] and r.ttl_seconds is None


@pytest.mark.parametrize("raw", [None, "allow", [], {"allow": 1, "reasons": [], "hold": False},
                                 {"allow": True, "reasons": "x", "hold": False}, {"allow": True}])
def test_parse_result_refuses_off_contract(raw: Any) -> None:
    with pytest.raises(PolicyError):
        parse_result(raw)


# ----- loading a policy dir -------------------------------------------------------------------


def test_policy_dir_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing: policy directory does not exist"):
        load_policy_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no Rego"):
        load_policy_dir(tmp_path / "empty")
    bad_rego = write_policy(tmp_path / "bad", "allow if {")
    with pytest.raises(ConfigError, match=r"does not compile: .*intentgate/p\.rego:\d+"):
        EmbeddedEngine(bad_rego, {})
    bad_data = write_policy(tmp_path / "data", 'decision := "x"')
    (bad_data / "intentgate" / "data.json").write_text("{oops")
    with pytest.raises(ConfigError, match=r"intentgate/data\.json: cannot read"):
        load_policy_dir(bad_data)
    (bad_data / "intentgate" / "data.json").write_text("[1]")
    with pytest.raises(ConfigError, match=r"data\.json: a data document must hold an object"):
        load_policy_dir(bad_data)


def test_data_documents_map_by_directory(tmp_path: Path) -> None:
    root = write_policy(tmp_path / "opa", "decision := {}")
    (root / "intentgate" / "teams").mkdir()
    (root / "intentgate" / "teams" / "data.yaml").write_text("support: [ann]\n")
    (root / "intentgate" / "data.json").write_text('{"limits": {"x": 1}}')
    (root / "intentgate" / "notes.json").write_text('{"ignored": true}')
    (root / "intentgate" / "p_test.rego").write_text("package intentgate_test\n")
    bundle = load_policy_dir(root)
    assert bundle.data == {"intentgate": {"limits": {"x": 1}, "teams": {"support": ["ann"]}}}
    assert [m for m, _ in bundle.modules] == ["intentgate/p.rego"]
    assert [m for m, _ in bundle.tests] == ["intentgate/p_test.rego"]
    assert bundle.data_with({"i": {}})["intentgate"]["intents"] == {"i": {}}
    assert "intents" not in bundle.data["intentgate"]  # data_with copies


def test_make_engine_errors() -> None:
    with pytest.raises(ConfigError, match="policy.url is not set"):
        make_engine("opa", policy_dir=POLICY_DIR, intents_doc={})
    with pytest.raises(ConfigError, match="unknown policy engine"):
        make_engine("wasm", policy_dir=POLICY_DIR, intents_doc={})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not an http"):
        make_engine("opa", policy_dir=POLICY_DIR, intents_doc={}, url="opa:8181")


# ----- the embedded engine's thread binding ----------------------------------------------------


def test_embedded_engine_refuses_other_threads_and_is_freed_anywhere(registry) -> None:
    box = [EmbeddedEngine(POLICY_DIR, registry.data_document())]
    raised: list[str] = []

    def worker() -> None:
        try:
            box[0].evaluate_sync(base_input())
        except BaseException as exc:  # noqa: BLE001
            raised.append(type(exc).__name__)  # not the exception: its traceback holds the engine

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert raised == ["PolicyError"]
    # the last reference dropped on another thread: parked, not freed there (regorus would
    # raise an unraisable "dropped on another thread" error, a test failure here)
    t = threading.Thread(target=lambda: (box.clear(), gc.collect()))
    t.start()
    t.join()
    EmbeddedEngine(POLICY_DIR, registry.data_document())  # frees the parked VM on this thread


# ----- the OPA engine: every failure denies ------------------------------------------------------


class _NotOpa(http.server.BaseHTTPRequestHandler):
    """Test double for what sits between the gateway and OPA, not for OPA: a proxy or load
    balancer that answers its own error page (HTML, 502), which a real OPA never sends.  Policy
    and data uploads succeed, so the engine gets as far as the query."""

    mode = "html"

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.command == "GET" and self.path == "/v1/policies/":
            return self._raw(200, b'{"result": []}', "application/json")
        if self.command == "PUT" and self.path.startswith("/v1/data/"):
            self.send_response(204)
            self.end_headers()
            return None
        if self.command in ("PUT", "DELETE"):
            return self._raw(200, b"{}", "application/json")
        if self.mode == "bad_gateway":
            return self._raw(502, b"<html>502 Bad Gateway</html>", "text/html")
        return self._raw(200, b"<html>proxy error</html>", "text/html")

    def _raw(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = _answer


@pytest.mark.parametrize("mode", ["html", "bad_gateway"])
async def test_opa_engine_fails_closed_behind_a_failing_proxy(registry, mode: str) -> None:
    handler = type("Handler", (_NotOpa,), {"mode": mode})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    eng = OpaServerEngine(f"http://127.0.0.1:{server.server_address[1]}", POLICY_DIR, registry.data_document())
    try:
        with pytest.raises(PolicyError, match="OPA query failed"):
            await eng.evaluate(base_input())
    finally:
        await eng.aclose()
        server.shutdown()
        server.server_close()


# a policy that errors when evaluated (two values for one complete rule: OPA answers 500), and
# one that loops for seconds on OPA (which has no instruction limit)
_CONFLICT = 'decision := {"allow": true, "reasons": [], "hold": false} if input.x == 1\n' \
            'decision := {"allow": false, "reasons": [], "hold": false} if input.x == 1'
_LOOP = 'decision := {"allow": true, "reasons": [], "hold": false} if {\n' \
        '\tcount([x | some x in numbers.range(1, 30000000); x % 7 == 3]) > 0\n}'


@pytest.mark.opa
@pytest.mark.parametrize("body", [_CONFLICT, _LOOP], ids=["eval_error", "slow"])
async def test_opa_engine_fails_closed_on_a_real_opa(opa_url: str, tmp_path: Path, body: str) -> None:
    eng = OpaServerEngine(opa_url, write_policy(tmp_path / "opa", body), {}, timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(PolicyError):
            await eng.evaluate({"x": 1})
        assert time.monotonic() - started < 3.0  # the engine's timeout, not OPA's evaluation
    finally:
        await eng.aclose()


def _opa_request_counts(client: httpx2.Client) -> dict[tuple[str, str, str], int]:
    """OPA's own count of the requests it served, by (handler, method, status code)."""
    counts: dict[tuple[str, str, str], int] = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("http_request_duration_seconds_count{"):
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.index("}")].split(","))
            key = (labels["handler"].strip('"'), labels["method"].strip('"'), labels["code"].strip('"'))
            counts[key] = int(float(line.rsplit(" ", 1)[1]))
    return counts


@pytest.mark.opa
async def test_opa_engine_uploads_the_policy_dir_once(opa_url: str, registry) -> None:
    from intentgate.policy._modules import merge_by_package

    with httpx2.Client(base_url=opa_url, timeout=10) as opa:
        text = {"Content-Type": "text/plain"}
        # left by an earlier gateway (ours: removed) and by someone else (kept)
        assert opa.put("/v1/policies/intentgate/stale/old", content=b"package intentgate_old\n\nx := 1\n",
                       headers=text).status_code == 200
        assert opa.put("/v1/policies/other/x", content=b"package other\n\ny := 2\n", headers=text).status_code == 200
        try:
            before = _opa_request_counts(opa)
            eng = OpaServerEngine(opa_url, POLICY_DIR, registry.data_document())
            try:
                for _ in range(2):
                    assert (await eng.evaluate(base_input())).allow
            finally:
                await eng.aclose()
            after = _opa_request_counts(opa)
            delta = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
            merged = merge_by_package(load_policy_dir(POLICY_DIR).modules)
            assert delta == {
                ("v1/policies", "get", "301"): 1,                  # opa-python-client asks for /v1/policies/
                ("v1/policies", "get", "200"): 1,
                ("v1/policies", "delete", "200"): 1,               # intentgate/stale/old; other/x stays
                ("v1/policies", "put", "200"): len(merged),        # one module per package
                ("v1/data", "put", "204"): 1,                      # data.intentgate, intents included
                ("v1/data", "post", "200"): 2,                     # the second query uploads nothing
            }
            ids = {p["id"] for p in opa.get("/v1/policies").json()["result"]}
            assert ids == {"other/x", *(f"intentgate/{pkg}" for pkg, _ in merged)}
            assert opa.get("/v1/policies/intentgate/intentgate").json()["result"]["raw"] == dict(merged)["intentgate"]
            data = opa.get("/v1/data/intentgate").json()["result"]
            assert {"limits", "reads", "intents"} <= set(data) and "refund-order" in data["intents"]
        finally:
            opa.delete("/v1/policies/other/x")


async def test_opa_engine_unreachable_fails_closed(registry) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    eng = OpaServerEngine(f"http://127.0.0.1:{port}", POLICY_DIR, registry.data_document(), timeout=1.0)
    try:
        with pytest.raises(PolicyError, match="could not push"):
            await eng.evaluate(base_input())
    finally:
        await eng.aclose()
    quiet = OpaServerEngine(f"http://127.0.0.1:{port}", POLICY_DIR, {}, push_policy=False, timeout=1.0)
    try:
        with pytest.raises(PolicyError, match="OPA query failed"):
            await quiet.evaluate(base_input())
    finally:
        await quiet.aclose()


def test_opa_engine_refuses_a_policy_that_does_not_compile(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not compile"):
        OpaServerEngine("http://127.0.0.1:1", write_policy(tmp_path / "opa", "allow if {"), {})


# ----- Rego unit tests ------------------------------------------------------------------------


def test_project_rego_tests_all_pass(registry) -> None:
    results = run_rego_tests(POLICY_DIR, registry.data_document())
    assert len(results) >= 20
    assert [(r.name, r.error) for r in results if not r.passed] == []
    assert {r.file for r in results} == {"intentgate/decision_test.rego", "intentgate/reads_test.rego",
                                         "intentgate/tasks_test.rego", "intentgate/asks_test.rego"}
    assert all(r.line > 0 for r in results)


def test_rego_runner_reports_failures(tmp_path: Path, registry) -> None:
    pdir = copy_policy(tmp_path)
    (pdir / "intentgate" / "zz_test.rego").write_text(
        "package intentgate_zz_test\n\nimport rego.v1\n\n"
        "test_passes if { 1 == 1 }\n\n"
        "test_undefined if { data.intentgate.decision.allow == true with input as {} }\n\n"
        "test_not_boolean := 7\n\n"
        "test_errors if { 1 / 0 }\n\n"
        'cases := {"small": 30, "large": 5000}\n\n'
        "test_table[note] if { some note, amount in cases; amount < 4000 }\n\n"
        "test_helper(x) if { x }\n"
    )
    results = {r.name: r for r in run_rego_tests(pdir, registry.data_document()) if r.file.endswith("zz_test.rego")}
    assert set(results) == {"test_passes", "test_undefined", "test_not_boolean", "test_errors", "test_table"}
    assert results["test_passes"].passed and results["test_passes"].ref == "data.intentgate_zz_test.test_passes"
    assert not results["test_undefined"].passed and results["test_undefined"].error == "undefined"
    assert results["test_undefined"].line == 7
    assert not results["test_not_boolean"].passed and results["test_not_boolean"].error == "evaluated to 7"
    assert not results["test_errors"].passed
    assert results["test_table"].passed  # the failing row is simply absent


def test_rego_runner_refuses_import_aliases(tmp_path: Path, registry) -> None:
    """regorus answers rules reached through `import data.x` wrongly: such runs must not pass."""
    pdir = copy_policy(tmp_path)
    (pdir / "intentgate" / "alias_test.rego").write_text(
        "package alias_test\n\nimport rego.v1\nimport data.intentgate\n\n"
        "test_wrong if { intentgate.allow with input as {} }\n"
    )
    results = run_rego_tests(pdir, registry.data_document())
    assert results and not any(r.passed for r in results)
    assert all("import data.…` at intentgate/alias_test.rego:4" in (r.error or "") for r in results)


# ----- CLI ----------------------------------------------------------------------------------


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, ["policy", *args])


def test_cli_policy_test_exit_codes(tmp_path: Path) -> None:
    ok = _cli("test", "--policy", str(POLICY_DIR), "--intents", str(INTENTS_DIR), "-v")
    assert ok.exit_code == 0, ok.output
    assert "data.intentgate_test.test_conformant_call_is_allowed: PASS" in ok.output
    assert "PASS: " in ok.output and "FAIL" not in ok.output

    pdir = copy_policy(tmp_path)
    (pdir / "intentgate" / "zz_test.rego").write_text("package zz_test\n\nimport rego.v1\n\ntest_nope if { false }\n")
    bad = _cli("test", "--policy", str(pdir), "--intents", str(INTENTS_DIR))
    assert bad.exit_code == 1
    assert "data.zz_test.test_nope: FAIL" in bad.output and "FAIL: 1/" in bad.output

    empty = write_policy(tmp_path / "empty", 'decision := "x"')
    none = _cli("test", "--policy", str(empty), "--intents", str(INTENTS_DIR))
    assert none.exit_code == 1 and "no Rego tests" in none.output

    missing = _cli("test", "--policy", str(tmp_path / "nowhere"), "--intents", str(INTENTS_DIR))
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_cli_policy_eval(tmp_path: Path) -> None:
    f = tmp_path / "input.json"
    f.write_text(json.dumps(refund_input(2500)))
    out = _cli("eval", "--input", str(f), "--policy", str(POLICY_DIR), "--intents", str(INTENTS_DIR))
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == {"allow": True, "reasons": ["large_refund"], "hold": True, "ttl_seconds": 15}

    broken = write_policy(tmp_path / "opa", 'decision := "allow everything"')
    off = _cli("eval", "--input", str(f), "--policy", str(broken), "--intents", str(INTENTS_DIR))
    assert off.exit_code == 1 and "policy_error" in off.output
    (tmp_path / "bad.json").write_text("{")
    unreadable = _cli("eval", "--input", str(tmp_path / "bad.json"), "--policy", str(POLICY_DIR),
                      "--intents", str(INTENTS_DIR))
    assert unreadable.exit_code == 2


# ----- one module per package, for OPA's Policy API ------------------------------------------------


def test_merging_by_package_keeps_every_rule_and_refuses_clashing_imports() -> None:
    from intentgate.policy._modules import merge_by_package, package_of

    a = "# METADATA\n# title: a\npackage p\n\nimport rego.v1\nimport data.x as lib\n\nx := 1\n"
    b = "package p\nimport rego.v1\n\ny := `package q\nimport data.z`\n"
    c = "package p.sub\n\nz := 3\n"
    merged = dict(merge_by_package([("a.rego", a), ("b.rego", b), ("c.rego", c)]))
    assert list(merged) == ["p", "p/sub"]
    text = merged["p"]
    assert text.startswith("package p\n\nimport rego.v1\nimport data.x as lib\n")
    assert "x := 1" in text and "y := `package q\nimport data.z`" in text  # bodies verbatim, raw strings too
    assert "# METADATA" not in text  # a package annotation would have attached to the next rule
    assert package_of("c.rego", c) == "p.sub"
    with pytest.raises(ConfigError, match=r"d\.rego: 'import data\.y' uses the name 'lib'"):
        merge_by_package([("a.rego", a), ("d.rego", "package p\nimport data.y as lib\n")])
    with pytest.raises(ConfigError, match="e.rego:1: expected the package statement"):
        merge_by_package([("e.rego", "x := 1\n")])
