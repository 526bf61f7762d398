"""Policy engines: one suite both engines pass (the OPA server where one is reachable)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.errors import ConfigError, PolicyError
from gateway.policy import EmbeddedEngine, OpaServerEngine, load_policy_dir, make_engine, run_rego_tests
from tests.conftest import INTENTS_DIR, POLICY_DIR

MONDAY_10_MS = 1_799_056_800_000
OPA_URL = os.environ.get("INTENTGATE_OPA_URL", "")


def opa_unreachable() -> str | None:
    if not OPA_URL:
        return "no OPA server configured (set INTENTGATE_OPA_URL to run the OPA-server engine tests)"
    parts = urlsplit(OPA_URL)
    try:
        socket.create_connection((parts.hostname, parts.port or 80), timeout=2).close()
    except OSError:
        return f"no OPA server reachable at INTENTGATE_OPA_URL={OPA_URL}"
    return None


def base_input(**over) -> dict:
    doc = {
        "agent": {"id": "spiffe://example.org/agent/support-1", "claims": {}},
        "intent": {"name": "refund-order", "version": "3", "params": {"order_id": "ORD-7", "ticket_id": "TCK-1"}},
        "task": {"id": "tsk_1", "history": []},
        "call": {"upstream": "orders", "tool": "get_order", "step": "lookup", "arguments": {"order_id": "ORD-7"}},
        "workflow": {"ok": True, "violations": []},
        "context": {"now": "2027-01-04T10:00:00.000000Z", "now_ms": MONDAY_10_MS, "environment": "prod",
                    "mode": "enforce"},
    }
    doc.update(over)
    return doc


def refund_input(amount, currency="EUR") -> dict:
    return base_input(call={"upstream": "payments", "tool": "refund", "step": "refund",
                            "arguments": {"order_id": "ORD-7", "amount": amount, "currency": currency}})


@pytest.fixture(params=["embedded", pytest.param("opa", marks=pytest.mark.opa)])
async def engine(request, registry):
    if request.param == "opa":
        why = opa_unreachable()
        if why:
            pytest.skip(why)
        eng = make_engine("opa", policy_dir=POLICY_DIR, intents_doc=registry.data_document(), url=OPA_URL)
    else:
        eng = make_engine("embedded", policy_dir=POLICY_DIR, intents_doc=registry.data_document())
    yield eng
    await eng.aclose()


async def test_allow(engine) -> None:
    r = await engine.evaluate(base_input())
    assert r.allow and r.reasons == [] and not r.hold and r.ttl_seconds == 30


async def test_workflow_not_ok_denies(engine) -> None:
    r = await engine.evaluate(base_input(workflow={"ok": False, "violations": ["step_out_of_order:refund"]}))
    assert not r.allow and r.reasons == ["workflow_violation"]


async def test_refund_rules(engine) -> None:
    small = await engine.evaluate(refund_input(30))
    assert small.allow and not small.hold and small.ttl_seconds == 15
    held = await engine.evaluate(refund_input(2500))
    assert held.allow and held.hold and held.reasons == ["large_refund"]
    over = await engine.evaluate(refund_input(4000))
    assert not over.allow and "refund_over_limit" in over.reasons


async def test_agent_must_match_intent(engine) -> None:
    r = await engine.evaluate(base_input(agent={"id": "spiffe://evil.example/agent/support-1", "claims": {}}))
    assert not r.allow and r.reasons == ["agent_not_permitted"]


async def test_change_window(engine) -> None:
    rotation = base_input(
        agent={"id": "spiffe://example.org/agent/ops-1", "claims": {}},
        intent={"name": "rotate-credential", "version": "2", "params": {}},
        call={"upstream": "secrets", "tool": "rotate_credential", "step": "rotate", "arguments": {}},
    )
    assert (await engine.evaluate(rotation)).allow
    rotation["context"] = {**rotation["context"], "now_ms": MONDAY_10_MS - 2 * 86_400_000}  # Saturday
    r = await engine.evaluate(rotation)
    assert not r.allow and r.reasons == ["outside_change_window"]


@pytest.mark.parametrize("garbage", [{}, {"agent": 1}, {"workflow": {"ok": "yes"}}, {"call": []}])
async def test_garbage_input_denies(engine, garbage) -> None:
    r = await engine.evaluate(garbage)
    assert r.allow is False


async def test_revision_is_stable_and_content_addressed(engine, registry) -> None:
    again = make_engine("embedded", policy_dir=POLICY_DIR, intents_doc=registry.data_document())
    assert engine.revision == again.revision
    changed = make_engine("embedded", policy_dir=POLICY_DIR, intents_doc={})
    assert changed.revision != engine.revision


# ----- embedded engine specifics -----------------------------------------------------------


def copy_policy(tmp_path: Path) -> Path:
    dst = tmp_path / "opa"
    shutil.copytree(POLICY_DIR, dst)
    return dst


async def test_reload_on_change(tmp_path: Path, registry) -> None:
    pdir = copy_policy(tmp_path)
    eng = EmbeddedEngine(pdir, registry.data_document(), reload_interval=0)
    before = eng.revision
    assert (await eng.evaluate(refund_input(2000))).allow
    data = json.loads((pdir / "intentgate" / "data.json").read_text())
    data["limits"]["refund"]["max"]["EUR"] = 1500
    time.sleep(0.01)
    (pdir / "intentgate" / "data.json").write_text(json.dumps(data))
    assert await eng.reload_if_changed() is True
    assert eng.revision != before
    r = await eng.evaluate(refund_input(2000))
    assert not r.allow and "refund_over_limit" in r.reasons
    assert await eng.reload_if_changed() is False  # nothing changed since


async def test_broken_edit_keeps_old_policy(tmp_path: Path, registry) -> None:
    pdir = copy_policy(tmp_path)
    eng = EmbeddedEngine(pdir, registry.data_document(), reload_interval=0)
    before = eng.revision
    (pdir / "intentgate" / "refunds.rego").write_text("package intentgate\n\ndeny contains if {{{\n")
    assert await eng.reload_if_changed() is False
    assert eng.revision == before
    assert (await eng.evaluate(refund_input(30))).allow


async def test_reload_is_rate_limited(tmp_path: Path, registry) -> None:
    pdir = copy_policy(tmp_path)
    eng = EmbeddedEngine(pdir, registry.data_document())
    (pdir / "intentgate" / "extra.rego").write_text('package intentgate\n\ndeny contains "always" if true\n')
    assert await eng.reload_if_changed() is False  # checked again only after the interval
    assert await eng.reload_if_changed(force=True) is True
    assert not (await eng.evaluate(base_input())).allow


async def test_off_contract_answer_is_policy_error(tmp_path: Path) -> None:
    pdir = tmp_path / "opa" / "intentgate"
    pdir.mkdir(parents=True)
    for body in ['decision := "allow"', 'decision := {"allow": "yes"}', 'decision := {"allow": true, "extra": 1}']:
        (pdir / "p.rego").write_text(f"package intentgate\n\n{body}\n")
        eng = EmbeddedEngine(pdir.parent, {})
        with pytest.raises(PolicyError):
            await eng.evaluate(base_input())


async def test_undefined_decision_is_policy_error(tmp_path: Path) -> None:
    pdir = tmp_path / "opa" / "intentgate"
    pdir.mkdir(parents=True)
    (pdir / "p.rego").write_text('package intentgate\n\ndecision := {"allow": true} if input.never\n')
    eng = EmbeddedEngine(pdir.parent, {})
    with pytest.raises(PolicyError):
        await eng.evaluate(base_input())


def test_policy_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_policy_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no Rego"):
        load_policy_dir(tmp_path / "empty")
    bad = tmp_path / "bad" / "intentgate"
    bad.mkdir(parents=True)
    (bad / "p.rego").write_text("package intentgate\n\nallow if {\n")
    with pytest.raises(ConfigError, match="does not compile"):
        EmbeddedEngine(bad.parent, {})


def test_data_documents_map_by_directory(tmp_path: Path) -> None:
    root = tmp_path / "opa"
    (root / "intentgate" / "teams").mkdir(parents=True)
    (root / "intentgate" / "p.rego").write_text("package intentgate\n\ndecision := {}\n")
    (root / "intentgate" / "teams" / "data.yaml").write_text("support: [ann]\n")
    (root / "intentgate" / "data.json").write_text('{"limits": {"x": 1}}')
    bundle = load_policy_dir(root)
    assert bundle.data == {"intentgate": {"limits": {"x": 1}, "teams": {"support": ["ann"]}}}


async def test_opa_engine_unreachable_fails_closed(registry) -> None:
    """A real client against a closed port: the engine must raise, never allow."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    eng = OpaServerEngine(f"http://127.0.0.1:{port}", POLICY_DIR, registry.data_document(), timeout=1.0)
    try:
        with pytest.raises(PolicyError):
            await eng.evaluate(base_input())
    finally:
        await eng.aclose()


# ----- Rego unit tests -----------------------------------------------------------------------


def test_project_rego_tests_all_pass(registry) -> None:
    results = run_rego_tests(POLICY_DIR, registry.data_document())
    assert len(results) >= 15
    assert [r.name for r in results if not r.passed] == []


def test_rego_runner_reports_failures(tmp_path: Path, registry) -> None:
    pdir = copy_policy(tmp_path)
    (pdir / "intentgate" / "zz_test.rego").write_text(
        "package intentgate_zz_test\n\nimport rego.v1\n\n"
        "test_passes if { 1 == 1 }\n\n"
        "test_fails if { data.intentgate.decision.allow == true with input as {} }\n"
    )
    results = {r.name: r for r in run_rego_tests(pdir, registry.data_document())}
    assert results["test_passes"].passed
    assert not results["test_fails"].passed and results["test_fails"].error == "undefined"
    assert results["test_fails"].file.endswith("zz_test.rego") and results["test_fails"].line == 7


def test_cli_policy_test(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["policy", "test", "--policy", str(POLICY_DIR), "--intents", str(INTENTS_DIR), "-v"])
    assert ok.exit_code == 0, ok.output
    assert "PASS: " in ok.output and "FAIL" not in ok.output
    pdir = copy_policy(tmp_path)
    (pdir / "intentgate" / "zz_test.rego").write_text("package zz_test\n\nimport rego.v1\n\ntest_nope if { false }\n")
    bad = runner.invoke(app, ["policy", "test", "--policy", str(pdir), "--intents", str(INTENTS_DIR)])
    assert bad.exit_code == 1
    assert "FAIL data.zz_test.test_nope" in bad.output


def test_cli_policy_eval(tmp_path: Path) -> None:
    f = tmp_path / "input.json"
    f.write_text(json.dumps(refund_input(2500)))
    out = CliRunner().invoke(app, ["policy", "eval", "--input", str(f), "--policy", str(POLICY_DIR),
                                   "--intents", str(INTENTS_DIR)])
    assert out.exit_code == 0, out.output
    decision = json.loads(out.output)
    assert decision["allow"] is True and decision["hold"] is True and decision["reasons"] == ["large_refund"]
