"""The decision log against someone who can write its database (a DBA, an attacker on the host).

The attacks of the security review, each run the way they were run: write access to the
SQLite file, the gateway's own hash functions to recompute with, but not the audit key and not
the checkpoints already published outside the database.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from intentgate.auditproof import verify_proof
from intentgate.checkpoints import AuditSigner, CheckpointError, parse_verifier_key, read_published
from intentgate.cli import app
from intentgate.clock import SystemClock
from intentgate.config import load_config
from intentgate.merkle import Frontier
from intentgate.sealer import Sealer
from intentgate.store import DecisionRecord, GrantRecord, Store
from intentgate.store.records import entry_hash, leaf_of

NOW = 1_900_000_000.0
runner = CliRunner()


def project(tmp_path: Path) -> Path:
    cfg = tmp_path / "intentgate.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'var'}\n"
                   "audit:\n  checkpoints:\n    sinks:\n"
                   f"      - file: {tmp_path / 'witness' / 'checkpoints.jsonl'}\n")
    return cfg


def decision(n: int, outcome: str = "deny") -> DecisionRecord:
    return DecisionRecord(id=f"dec_{n}", at=NOW + n, agent="spiffe://example.org/agent/a", task_id="tsk_1",
                          step="refund", upstream="payments", tool="payments.refund", outcome=outcome,
                          reasons=["refund_over_limit"] if outcome == "deny" else [],
                          arguments={"order_id": f"ORD-{n}", "amount": 10.0 * n})


async def gateway_writes(cfg_path: Path, n: int, start: int = 1) -> Store:
    """``n`` decisions written and sealed the way a serving gateway does (published to the sink)."""
    cfg = load_config(cfg_path)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store.open(cfg.database_url)
    for i in range(start, start + n):
        await store.commit_decision(decision(i, "deny" if i % 2 else "allow"))
    signer = AuditSigner.open(cfg.audit_keys_dir, cfg.audit.checkpoints.origin)
    await Sealer(store, signer, cfg.audit.checkpoints, SystemClock(), horizon=120).seal_now()
    return store


def verify(cfg: Path, *extra: str) -> tuple[int, str]:
    result = runner.invoke(app, ["audit", "verify", "--config", str(cfg), *extra])
    return result.exit_code, result.output


def rewrite_as_a_dba(db: Path, *, edit_seq: int, drop_newest: int) -> None:
    """The review's attack: a deny becomes an allow, every hash recomputed with the gateway's own
    functions, the tree rebuilt and the checkpoints it cannot re-sign removed, the newest rows
    deleted."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    con.execute("UPDATE decisions SET outcome = 'allow', reasons = '[]' WHERE seq = ?", (edit_seq,))
    newest = con.execute("SELECT max(seq) FROM decisions").fetchone()[0]
    con.execute("DELETE FROM decisions WHERE seq > ?", (newest - drop_newest,))
    _rehash_rows(con)
    con.execute("DELETE FROM audit_leaves")
    con.execute("DELETE FROM audit_checkpoints")
    con.commit()
    con.close()


async def test_a_recomputed_and_truncated_rewrite_is_found_through_the_published_checkpoint(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    store = await gateway_writes(cfg, 10)
    store.close()
    code, out = verify(cfg)
    assert code == 0 and "audit log OK" in out and "1 published" in out, out

    db = tmp_path / "var" / "intentgate.db"
    rewrite_as_a_dba(db, edit_seq=3, drop_newest=2)
    # the database alone now looks fine: every hash matches, nothing left to compare with
    store = Store.open(f"sqlite:///{db}")
    assert store.verify_log(now=NOW).ok
    # the gateway reseals what it finds and signs it: it cannot tell, this process never signed before
    cfg_model = load_config(cfg)
    signer = AuditSigner.open(cfg_model.audit_keys_dir, cfg_model.audit.checkpoints.origin)
    await Sealer(store, signer, cfg_model.audit.checkpoints, SystemClock(), horizon=120).seal_now()
    store.close()

    code, out = verify(cfg)  # the config's file sink holds the checkpoint published before the rewrite
    assert code == 1 and "BROKEN" in out, out
    assert "published checkpoint 10" in out and "truncated" in out
    # with the sink's copy given explicitly (an auditor's copy), the same
    code, out = verify(cfg, "--checkpoints", str(tmp_path / "witness"))
    assert code == 1 and "published checkpoint 10" in out


async def test_a_rewrite_after_this_gateway_signed_stops_its_sealer(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    store = await gateway_writes(cfg, 4)
    cfg_model = load_config(cfg)
    signer = AuditSigner.open(cfg_model.audit_keys_dir, cfg_model.audit.checkpoints.origin)
    sealer = Sealer(store, signer, cfg_model.audit.checkpoints, SystemClock(), horizon=120)
    await store.commit_decision(decision(5))
    assert (await sealer.seal_now()).size == 5
    store.close()
    rewrite_as_a_dba(tmp_path / "var" / "intentgate.db", edit_seq=1, drop_newest=0)
    store = Store.open(f"sqlite:///{tmp_path / 'var' / 'intentgate.db'}")
    sealer.store = store
    with pytest.raises(Exception, match="rewritten"):
        await sealer.seal_now()
    store.close()


async def test_reviewer_actions_are_in_the_log_and_their_tables_are_held_to_it(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    store = await gateway_writes(cfg, 2)
    from intentgate.store import ApprovalRecord

    approval = ApprovalRecord(id="apr_1", decision_id="dec_1", agent="spiffe://example.org/agent/a", task_id="tsk_1",
                              step="refund", tool="payments.refund", arguments_sha256="0" * 64, policy_revision="r1",
                              reasons=["approval_required"], created_at=NOW, expires_at=NOW + 10**6)
    await store.commit_decision(decision(3, "hold"), approval=approval)
    await store.decide_approval("apr_1", approve=True, reviewer="alice@example.org", now=NOW + 5, note="ok")
    grant = GrantRecord(id="grt_1", agent="spiffe://example.org/agent/a", tool="payments.refund", reason="incident 7",
                        created_by="bob@example.org", created_at=NOW + 6, expires_at=NOW + 10**6)
    await store.grants.create(grant)
    await store.grants.sign_off("grt_1", reviewer="carol@example.org", now=NOW + 7, note="fine")
    kinds = [d.kind for d in await store.list_decisions(limit=10)]
    assert {"review/approve", "grant/create", "grant/signoff"} <= set(kinds)
    store.close()
    code, out = verify(cfg)
    assert code == 0, out

    db = sqlite3.connect(tmp_path / "var" / "intentgate.db")
    db.execute("UPDATE approvals SET decided_by = 'mallory@example.org' WHERE id = 'apr_1'")
    db.execute("DELETE FROM grants WHERE id = 'grt_1'")
    db.commit()
    db.close()
    code, out = verify(cfg)
    assert code == 1
    assert "approval apr_1" in out and "mallory@example.org" in out and "alice@example.org" in out
    assert "grant grt_1" in out and "missing from the grants table" in out

    # and the export carries them like any decision
    result = await asyncio.to_thread(runner.invoke, app, ["audit", "export", "--config", str(cfg)])
    exported = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert {"review/approve", "grant/create", "grant/signoff"} <= {d["kind"] for d in exported}


async def test_admin_tokens_and_key_rotations_are_recorded(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    (await gateway_writes(cfg, 1)).close()
    minted = runner.invoke(app, ["admin-token", "--reviewer", "dana", "--ttl", "1h", "--config", str(cfg)])
    assert minted.exit_code == 0, minted.output
    rotated = runner.invoke(app, ["keys", "rotate", "--audit", "--config", str(cfg)])
    assert rotated.exit_code == 0, rotated.output
    store = Store.open(f"sqlite:///{tmp_path / 'var' / 'intentgate.db'}")
    try:
        records = {d.kind: d for d in await store.list_decisions(limit=10)}
    finally:
        store.close()
    assert records["admin/token"].arguments["sub"] == "dana" and minted.output.strip() not in json.dumps(
        records["admin/token"].model_dump())  # the token itself is never recorded
    assert records["keys/rotate"].arguments["keys"] == "audit"
    # after the audit key rotated, old checkpoints still verify (its public half is kept) and new ones too
    sealed = await asyncio.to_thread(runner.invoke, app, ["audit", "seal", "--config", str(cfg)])
    assert sealed.exit_code == 0, sealed.output
    code, out = verify(cfg)
    assert code == 0, out


async def test_inclusion_and_consistency_proofs_check_without_the_database(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    store = await gateway_writes(cfg, 7)
    cfg_model = load_config(cfg)
    signer = AuditSigner.open(cfg_model.audit_keys_dir, cfg_model.audit.checkpoints.origin)
    for n in range(8, 12):
        await store.commit_decision(decision(n))
    await Sealer(store, signer, cfg_model.audit.checkpoints, SystemClock(), horizon=120).seal_now()
    store.close()
    vkey = signer.published()["verifier_keys"][0]
    keys = [parse_verifier_key(vkey)]

    out = await asyncio.to_thread(runner.invoke, app, ["audit", "prove", "dec_5", "--config", str(cfg)])
    assert out.exit_code == 0, out.output
    proof = json.loads(out.output)
    assert proof["tree_size"] == 11 and proof["leaf_index"] == 4
    assert "decision dec_5 is leaf 4" in verify_proof(proof, keys)
    path = tmp_path / "proof.json"
    path.write_text(json.dumps(proof))
    checked = runner.invoke(app, ["audit", "check-proof", str(path), "--key", vkey])
    assert checked.exit_code == 0 and "proof OK" in checked.output

    tampered = json.loads(json.dumps(proof))
    tampered["decision"]["outcome"] = "allow"
    with pytest.raises(CheckpointError, match="edited"):
        verify_proof(tampered, keys)
    rehashed = json.loads(json.dumps(tampered))
    rehashed["decision"]["hash"] = entry_hash(rehashed["decision"])  # recomputed: the path no longer fits
    with pytest.raises(CheckpointError, match="not leaf 4"):
        verify_proof(rehashed, keys)
    path.write_text(json.dumps(rehashed))
    assert runner.invoke(app, ["audit", "check-proof", str(path), "--key", vkey]).exit_code == 1

    out = await asyncio.to_thread(runner.invoke, app, ["audit", "consistency", "7", "11", "--config", str(cfg)])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert "size 7 is a prefix of the signed tree of size 11" in verify_proof(doc, keys)
    doc["consistency_path"][0] = "00" * 32
    with pytest.raises(CheckpointError, match="not a prefix"):
        verify_proof(doc, keys)
    other = AuditSigner.open(tmp_path / "other-keys", cfg_model.audit.checkpoints.origin)
    with pytest.raises(CheckpointError, match="not signed by a known audit key"):
        verify_proof(proof, other.public_keys())


def test_published_checkpoints_are_signed_notes_and_damage_is_reported(tmp_path: Path) -> None:
    signer = AuditSigner.open(tmp_path / "keys", "intentgate/test")
    note, _ = signer.sign(3, b"\x11" * 32, NOW)
    assert note.splitlines()[:3] == ["intentgate/test", "3", "ERERERERERERERERERERERERERERERERERERERERERE="]
    from intentgate.checkpoints import verify_checkpoint

    assert verify_checkpoint(note, signer.public_keys()).size == 3
    with pytest.raises(CheckpointError, match="signature does not verify"):
        verify_checkpoint(note.replace("\n3\n", "\n4\n"), signer.public_keys())
    sink = tmp_path / "sink.jsonl"
    sink.write_text('{"note": "x"}\nnot json\n')
    with pytest.raises(CheckpointError, match="sink.jsonl:2"):
        read_published(sink)


# ----- property: random logs, random tamperings, each found under a covering checkpoint ------
TAMPERINGS = ("edit", "edit_and_rehash", "insert", "delete", "reorder", "truncate", "forge_leaf")


def _tamper(db: Path, how: str, pick: int) -> None:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM decisions ORDER BY seq")]
    target = rows[pick % len(rows)]
    if how in ("edit", "edit_and_rehash"):
        con.execute("UPDATE decisions SET outcome = CASE outcome WHEN 'deny' THEN 'allow' ELSE 'deny' END "
                    "WHERE seq = ?", (target["seq"],))
    elif how == "insert":  # a forged row, carried into the tree in place of a real one
        con.execute("UPDATE decisions SET id = 'dec_forged', agent = 'spiffe://example.org/agent/b' WHERE seq = ?",
                    (target["seq"],))
    elif how == "delete":
        con.execute("DELETE FROM decisions WHERE seq = ?", (target["seq"],))
    elif how == "reorder" and len(rows) > 1:
        other = rows[(pick + 1) % len(rows)]
        con.execute("UPDATE audit_leaves SET seq = -1 WHERE seq = ?", (target["seq"],))
        con.execute("UPDATE audit_leaves SET seq = ? WHERE seq = ?", (target["seq"], other["seq"]))
        con.execute("UPDATE audit_leaves SET seq = ? WHERE seq = -1", (other["seq"],))
    elif how == "truncate" or (how == "reorder" and len(rows) == 1):
        con.execute("DELETE FROM decisions WHERE seq >= ?", (target["seq"],))
    elif how == "forge_leaf":  # the tree made to say another entry is there
        con.execute("UPDATE audit_leaves SET hash = ? WHERE seq = ?", ("ab" * 32, target["seq"]))
    if how not in ("edit", "forge_leaf"):  # the attacker recomputes every hash, every leaf and the stored heads
        _recompute_everything(con)
    con.commit()
    con.close()


def _rehash_rows(con: sqlite3.Connection) -> None:
    """Give every row the hash of what it now holds, with the gateway's own function."""
    for row in con.execute("SELECT * FROM decisions").fetchall():
        r = dict(row)
        for key in ("arguments", "reasons", "policy_input", "policy_result", "masked", "timings_us"):
            r[key] = json.loads(r[key]) if r[key] is not None else None
        con.execute("UPDATE decisions SET hash = ? WHERE seq = ?", (entry_hash(r), r["seq"]))


def _recompute_everything(con: sqlite3.Connection) -> None:
    _rehash_rows(con)
    order = [s for (s,) in con.execute("SELECT seq FROM audit_leaves ORDER BY idx")]
    present = {s for (s,) in con.execute("SELECT seq FROM decisions")}
    con.execute("DELETE FROM audit_leaves")
    frontier = Frontier()
    for seq in [s for s in order if s in present] + sorted(present - set(order)):
        h, v = con.execute("SELECT hash, hash_v FROM decisions WHERE seq = ?", (seq,)).fetchone()
        leaf = leaf_of(h, v)
        con.execute("INSERT INTO audit_leaves (idx, seq, hash) VALUES (?, ?, ?)", (frontier.size, seq, leaf.hex()))
        frontier.append(leaf)
    # it cannot sign: the stored checkpoints go, the ones it could keep would not match
    con.execute("DELETE FROM audit_checkpoints")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 16), how=st.sampled_from(TAMPERINGS), pick=st.integers(0, 1000))
async def test_every_tampering_under_a_published_checkpoint_is_found(n: int, how: str, pick: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        cfg = project(tmp_path)
        store = await gateway_writes(cfg, n)
        cfg_model = load_config(cfg)
        signer = AuditSigner.open(cfg_model.audit_keys_dir, cfg_model.audit.checkpoints.origin)
        published = read_published(tmp_path / "witness" / "checkpoints.jsonl")
        assert store.verify_log(keys=signer.public_keys(), origin=signer.origin, published=published, now=NOW).ok
        store.close()
        _tamper(tmp_path / "var" / "intentgate.db", how, pick)
        store = Store.open(cfg_model.database_url)
        try:
            report = store.verify_log(keys=signer.public_keys(), origin=signer.origin, published=published,
                                      now=NOW)
        finally:
            store.close()
        assert not report.ok, (how, n, pick)


class _Witness:
    """A stand-in for a witness outside the project (none runs here): an HTTP server on
    127.0.0.1 that keeps every note POSTed to it, and can be told to fail."""

    def __init__(self) -> None:
        import http.server
        import threading

        witness = self
        self.notes: list[str] = []
        self.failing = True

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers["content-length"])).decode()
                if witness.failing:
                    self.send_response(503)
                else:
                    witness.notes.append(body)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/add-checkpoint"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_checkpoints_reach_an_http_witness_and_a_failed_one_is_retried(tmp_path: Path) -> None:
    from intentgate.checkpoints import HttpSink, verify_checkpoint
    from intentgate.metrics import Metrics

    witness = _Witness()
    try:
        store = Store.open(f"sqlite:///{tmp_path / 'g.db'}")
        signer = AuditSigner.open(tmp_path / "keys", "intentgate/test")
        metrics = Metrics()
        cfg = load_config(project(tmp_path)).audit.checkpoints
        sealer = Sealer(store, signer, cfg, SystemClock(), horizon=120, sinks=[HttpSink(witness.url)], events=metrics)
        await store.commit_decision(decision(1))
        assert (await sealer.seal_now()).size == 1
        assert witness.notes == []  # the witness refused: counted, kept for the next round
        failures = metrics.registry.get_sample_value("intentgate_checkpoint_publish_failures_total",
                                                     {"sink": f"url:{witness.url}"})
        assert failures == 1
        witness.failing = False
        await store.commit_decision(decision(2))
        await store.commit_decision(decision(3))
        assert (await sealer.seal_now()).size == 3
        [note] = witness.notes  # the newest head, which covers the one that was missed
        assert verify_checkpoint(note, signer.public_keys()).size == 3
        assert metrics.registry.get_sample_value("intentgate_audit_tree_size") == 3
        store.close()
    finally:
        witness.close()


def test_the_audit_keys_are_published_beside_the_jwks_and_a_served_gateway_seals(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from intentgate.checkpoints import verify_checkpoint
    from intentgate.web import create_app
    from tests.conftest import INTENTS_DIR, POLICY_DIR

    cfg_path = project(tmp_path)
    cfg_path.write_text(cfg_path.read_text() + f"intents_dir: {INTENTS_DIR}\npolicy_dir: {POLICY_DIR}\n")
    config = load_config(cfg_path)
    with TestClient(create_app(config)) as client:
        published = client.get("/.well-known/intentgate-audit-keys").json()
        assert published["origin"] == "intentgate/audit"
        assert client.get("/.well-known/jwks.json").json()["keys"][0]["kid"] not in {
            k["kid"] for k in published["jwks"]["keys"]}  # not the action-token keys
        rt = client.app.state.runtime  # type: ignore[attr-defined]
        client.portal.call(rt.store.commit_decision, decision(1))  # type: ignore[union-attr]
    # shutting down sealed it and published the checkpoint to the config's file sink
    [note] = read_published(tmp_path / "witness" / "checkpoints.jsonl")
    keys = [parse_verifier_key(k) for k in published["verifier_keys"]]
    assert verify_checkpoint(note, keys).size == 1
