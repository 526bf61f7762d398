"""Reviewer CLI (decisions, show, audit export, admin-token) on a database filled by the real
pipeline, read directly through the config, as an operator without a running gateway would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from intentgate.cli import app
from intentgate.config import GatewayConfig, load_config
from intentgate.identity import IdentityError
from intentgate.keys import KeySet
from intentgate.review import ReviewerAuth
from intentgate.runtime import Runtime
from tests.conftest import INTENTS_DIR, POLICY_DIR
from tests.test_review_api import EXPORT_FIELDS, Filled, fill

EARLY = ("a_begin", "a_read", "a_lookup", "a_refund", "a_comment")


@pytest.fixture
def filled(tmp_path: Path, db_url: str) -> tuple[Path, GatewayConfig, Filled]:
    path = tmp_path / "intentgate.yaml"
    path.write_text(yaml.safe_dump({"intents_dir": str(INTENTS_DIR), "policy_dir": str(POLICY_DIR),
                                    "data_dir": str(tmp_path), "store": {"url": db_url}}))
    config = load_config(path)
    return path, config, fill(config)


def cli(config: Path, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(app, [*args, "--config", str(config)], env={"COLUMNS": "200"})
    assert result.exit_code == code, (result.output, result.exception)
    return result


def ids(config: Path, *args: str) -> list[str]:
    page = json.loads(cli(config, "decisions", "--json", "--limit", "500", *args).stdout)
    return [d["id"] for d in page["items"]]


def test_decisions_json_and_filters(filled) -> None:
    config, _, f = filled
    everything = ids(config)
    assert set(everything) == set(f.ids.values()) and len(everything) == len(f.ids)
    assert set(ids(config, "--outcome", "deny")) == {
        f[n] for n in ("b_skip", "b_wrong_tool", "b_binding", "unknown_task", "other_agent", "c_over_limit")
    }
    assert ids(config, "--outcome", "hold") == [f["b_hold"]]
    assert ids(config, "--reason", "binding_mismatch") == [f["b_binding"]]
    assert ids(config, "--reason", "policy_denied", "--outcome", "deny") == [f["c_over_limit"]]
    assert ids(config, "--agent", "spiffe://example.org/agent/support-2") == [f["other_agent"]]
    assert ids(config, "--tool", "email.send") == [f["b_wrong_tool"]]
    assert ids(config, "--intent", "rotate-credential") == []
    assert set(ids(config, "--since", "2027-01-04T10:30:00Z")) == set(f.ids.values()) - {f[n] for n in EARLY}
    assert set(ids(config, "--until", "2027-01-04T10:30:00")) == {f[n] for n in EARLY}  # no offset: UTC
    assert ids(config, "-q", f.task_a) == [f[n] for n in reversed(EARLY)]


def test_decisions_paging(filled) -> None:
    config, _, f = filled
    seen, before = [], None
    while True:
        args = ["decisions", "--json", "--limit", "5"] + (["--before", str(before)] if before else [])
        page = json.loads(cli(config, *args).stdout)
        seen += [d["id"] for d in page["items"]]
        if (before := page["next_before"]) is None:
            break
    assert seen == ids(config) and len(set(seen)) == len(f.ids)


def test_decisions_table(filled) -> None:
    config, _, f = filled
    out = cli(config, "decisions", "--outcome", "hold").stdout
    assert "1 decision(s)" in out and f["b_hold"] in out and "policy_hold" in out
    out = cli(config, "decisions", "--limit", "2").stdout
    assert "more: --before" in out


def test_decisions_bad_input_exits_2(filled) -> None:
    config, _, _ = filled
    assert "unknown reason code" in cli(config, "decisions", "--reason", "nope", code=2).stderr
    assert "outcome" in cli(config, "decisions", "--outcome", "maybe", code=2).stderr
    assert "age" in cli(config, "decisions", "--since", "yesterday-ish", code=2).stderr


def test_show_json_and_panels(filled) -> None:
    config, _, f = filled
    detail = json.loads(cli(config, "show", f["b_binding"], "--json").stdout)
    assert detail["decision"]["reasons"] == ["binding_mismatch:order_id"]
    assert detail["decision"]["arguments"] == {"order_id": "ORD-8", "amount": 5, "currency": "EUR"}
    assert [(p["step"], p["relation"]) for p in detail["graph"]["path"]] == [
        ("read_ticket", "before"), ("lookup", "before")]
    assert detail["graph"]["attempted"] == "refund" and detail["task"]["id"] == f.task_b
    assert detail["task"]["issuer"] == "orchestrator:spiffe://example.org/orchestrator"
    detail = json.loads(cli(config, "show", f["a_refund"], "--json").stdout)
    assert detail["token"]["status"] == "consumed" and detail["token"]["jti"] == f.token_jti
    out = cli(config, "show", f["b_hold"]).stdout
    assert f"decision {f['b_hold']}" in out and "HOLD" in out and "→ attempted" in out
    assert "path before this decision: read_ticket → lookup" in out and "approval apr_" in out
    assert "task issuer orchestrator:spiffe://example.org/orchestrator" in out
    assert "no decision" in cli(config, "show", "dec_nope", code=1).stderr


def test_audit_export_to_file_and_stdout(filled, tmp_path: Path) -> None:
    config, _, f = filled
    out = tmp_path / "audit.jsonl"
    result = cli(config, "audit", "export", "--out", str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert f"exported {len(f.ids)} decision(s)" in result.stderr
    assert [d["seq"] for d in lines] == list(range(1, len(f.ids) + 1))
    assert sorted(d["id"] for d in lines) == sorted(f.ids.values())
    assert all(list(d) == EXPORT_FIELDS for d in lines)
    since = [json.loads(x) for x in cli(config, "audit", "export", "--since", "2027-01-04T10:30:00Z").stdout.splitlines()]
    assert {d["id"] for d in since} == set(f.ids.values()) - {f[n] for n in EARLY}
    tail = [json.loads(x) for x in cli(config, "audit", "export", "--after-seq", "15").stdout.splitlines()]
    assert [d["seq"] for d in tail] == list(range(16, len(f.ids) + 1))
    # same lines as the file, byte for byte
    assert cli(config, "audit", "export").stdout == out.read_text()


async def test_admin_token_is_a_reviewer_token_and_not_an_agent_token(tmp_path: Path) -> None:
    config_path = tmp_path / "intentgate.yaml"
    config_path.write_text(yaml.safe_dump({"intents_dir": str(INTENTS_DIR), "policy_dir": str(POLICY_DIR),
                                           "data_dir": str(tmp_path)}))
    token = cli(config_path, "admin-token", "--reviewer", "carol", "--ttl", "15m").stdout.strip()
    config = load_config(config_path)
    rt = await Runtime.open(config)
    try:
        auth = ReviewerAuth(config.review, admin_keys=KeySet(config.admin_keys_dir), agents=rt.identity_verifier())
        reviewer = auth.authenticate(token)
        assert reviewer.id == "carol" and reviewer.via == "admin_token"
        with pytest.raises(IdentityError):
            rt.identity_verifier().verify(token)
    finally:
        await rt.aclose()
    assert "7 days" in cli(config_path, "admin-token", "--ttl", "30d", code=2).stderr
    config_path.write_text(config_path.read_text() + "review: {admin_tokens: false}\n")
    assert "disabled" in cli(config_path, "admin-token", code=2).stderr


@pytest.mark.parametrize("command", [["admin-token"], ["decisions"], ["show"], ["audit", "export"]])
def test_every_reviewer_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "Usage:" in result.stdout
    doc = {"admin-token": "admin token", "decisions": "List decisions", "show": "one decision",
           "audit": "JSON lines"}[command[0]]
    assert doc in result.stdout
