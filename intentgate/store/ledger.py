"""The decision log's Merkle tree: sealing decisions into it, and verifying it.

Decisions are written with no shared lock (each row carries its own leaf hash); the
**sealer** appends them to ``audit_leaves`` in the order it finds them and signs a checkpoint
over the new tree head, in one transaction that only one replica runs at a time (SQLite's
write lock, or a PostgreSQL advisory lock taken with ``pg_try_advisory_xact_lock``: a replica
that does not get it leaves the round to the one that did).

On PostgreSQL a decision can commit after one with a higher ``seq`` (sequence numbers are
taken before commit), so the sealer does not stop at the highest seq it sealed: it looks at
every unsealed row above the ``max_seq`` of the newest checkpoint at least ``horizon``
seconds old, that is, far longer than any decision transaction can stay open.  (SQLite has
one writer, so rows commit in seq order and it starts after the newest checkpoint's.)

Verification reads only the database and the keys and notes it is given: every row against
its hash, every leaf against its row, the tree recomputed leaf by leaf and compared with each
stored and each published checkpoint at its size.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, bindparam, exists, func, insert, select, text

from ..canonical import arguments_sha256
from ..checkpoints import Checkpoint, CheckpointError, verify_checkpoint
from ..errors import StoreError
from ..merkle import Frontier
from .compiled import OnSqliteCursor
from .records import GENESIS_HASH, HASH_VERSION, DecisionRecord, entry_hash, leaf_of
from .tables import ApprovalRow, AuditLeafRow, ChainHeadRow, CheckpointRow, DecisionRow, GrantRow

__all__ = ["REVIEW_KINDS", "LogReport", "Sealed", "append_decision", "review_record", "seal", "verify_log"]

leaves_t = AuditLeafRow.__table__
checkpoints_t = CheckpointRow.__table__
decisions_t = DecisionRow.__table__
chain_t = ChainHeadRow.__table__
approvals_t = ApprovalRow.__table__
grants_t = GrantRow.__table__
SEAL_LOCK = 0x1E7E_5EA1  # pg advisory lock key: "intentgate sealer"
Signer = Callable[[int, bytes, float], tuple[str, str]]  # (size, root, at) -> (note, key id)


_INSERT = insert(decisions_t).values({c.name: bindparam(c.name) for c in decisions_t.columns if c.name != "seq"})
_insert = OnSqliteCursor(_INSERT, _INSERT.returning(decisions_t.c.seq))

# Reviewer actions are log records too (kind below, ``agent`` = who acted, ``arguments`` = what
# they did): in the tree, the export and the proofs like any decision.
REVIEW_KINDS = ("review/approve", "review/reject", "grant/create", "grant/revoke", "grant/signoff",
                "admin/token", "keys/rotate")


def append_decision(conn: Connection, record: DecisionRecord) -> int:
    """Append one record; caller holds the transaction.  No shared lock: the row carries its
    own hash and the database numbers it (the sealer orders it into the tree later)."""
    row = record.model_dump(exclude={"seq"})
    row["hash_v"] = HASH_VERSION
    row["prev_hash"] = ""
    row["hash"] = entry_hash(row)
    result = _insert(conn, row)
    seq = result.lastrowid if conn.dialect.name == "sqlite" else result.scalar_one()
    record.seq, record.prev_hash, record.hash, record.hash_v = seq, "", row["hash"], HASH_VERSION
    return seq


def review_record(kind: str, *, actor: str, at: float, subject: dict[str, Any], task_id: str | None = None,
                  tool: str | None = None, reason: str | None = None) -> DecisionRecord:
    """The log record of one reviewer (or operator) action."""
    assert kind in REVIEW_KINDS, kind
    return DecisionRecord(id=f"act_{secrets.token_urlsafe(12)}", at=at, kind=kind, agent=actor, task_id=task_id,
                          tool=tool, arguments=subject, arguments_sha256=arguments_sha256(subject),
                          outcome="allow", reasons=[reason] if reason else [])


@dataclass(frozen=True)
class Sealed:
    checkpoint: Checkpoint
    note: str
    added: int
    full: bool  # the batch was full: more rows wait


def newest_checkpoint(conn: Connection) -> Any:
    return conn.execute(select(checkpoints_t).order_by(checkpoints_t.c.size.desc()).limit(1)).first()


class Rewritten(StoreError):
    """The audit tables no longer hold what this process signed: the sealer stops."""


def seal(conn: Connection, *, now: float, horizon: float, origin: str, sign: Signer,
         batch: int = 20_000, signed: tuple[int, str] | None = None) -> Sealed | None:
    """Seal unsealed decisions into the tree and sign the new head; None if there was nothing to
    seal (or another replica holds the sealer's lock).  Caller holds a write transaction.

    ``signed`` is the newest (size, root) this process signed: if the stored tree is now
    smaller, or holds another root at that size, the tables were rewritten and nothing is
    signed over them (:class:`Rewritten`)."""
    if conn.dialect.name == "postgresql" and not conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": SEAL_LOCK}).scalar():
        return None
    last = newest_checkpoint(conn)
    if signed is not None and (last is None or last.size < signed[0]
                               or (last.size == signed[0] and last.root != signed[1])):
        raise Rewritten(f"the audit log no longer holds the checkpoint of size {signed[0]} this gateway signed: "
                        "its tables were rewritten; no checkpoint is signed over them (run `intentgate audit verify "
                        "--checkpoints ...` against the published checkpoints)")
    frontier = Frontier.load(last.frontier) if last is not None else Frontier()
    if last is not None and frontier.root().hex() != last.root:
        raise StoreError("the newest checkpoint's frontier does not give its root: the audit tables were "
                         "edited; run `intentgate audit verify`")
    top = conn.execute(select(func.max(leaves_t.c.idx))).scalar()
    if (-1 if top is None else top) + 1 != frontier.size:
        raise StoreError(f"the newest checkpoint covers {frontier.size} leaves but the tree holds "
                         f"{0 if top is None else top + 1}: the audit tables were edited; run `intentgate audit verify`")
    if conn.dialect.name == "sqlite":  # one writer: rows commit in seq order, none can appear behind
        floor = last.max_seq if last is not None else 0
    else:
        floor = conn.execute(select(checkpoints_t.c.max_seq).where(checkpoints_t.c.at <= now - horizon)
                             .order_by(checkpoints_t.c.size.desc()).limit(1)).scalar() or 0
    d = decisions_t.c
    rows = conn.execute(
        select(d.seq, d.hash, d.hash_v)
        .where(d.seq > floor, ~exists().where(leaves_t.c.seq == d.seq))
        .order_by(d.seq).limit(batch)
    ).all()
    if not rows:
        return None
    new = []
    for seq, hash_hex, version in rows:
        leaf = leaf_of(hash_hex, version)
        new.append({"idx": frontier.size, "seq": seq, "hash": leaf.hex()})
        frontier.append(leaf)
    conn.execute(insert(leaves_t), new)
    root = frontier.root()
    note, key_id = sign(frontier.size, root, now)
    max_seq = max(last.max_seq if last is not None else 0, rows[-1][0])
    conn.execute(insert(checkpoints_t).values(size=frontier.size, root=root.hex(), at=now, max_seq=max_seq,
                                              key_id=key_id, note=note, frontier=frontier.dump()))
    return Sealed(Checkpoint(origin, frontier.size, root, now), note, len(new), len(rows) == batch)


@dataclass
class LogReport:
    """What ``audit verify`` found."""

    checked: int = 0
    head_seq: int = 0
    sealed: int = 0
    unsealed: int = 0
    oldest_unsealed_at: float | None = None
    checkpoints: int = 0
    published: int = 0
    newest_checkpoint: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        if len(self.problems) < 200:
            self.problems.append(text)
        elif len(self.problems) == 200:
            self.problems.append("too many problems; the rest are not listed")


def _check_rows(conn_run: Callable[[Callable[[Connection], Any]], Any], report: LogReport, sealed: set[int],
                now: float, max_unsealed: float, progress: Callable[[int], None] | None,
                actions: dict[tuple[str, str], list[dict[str, Any]]]) -> float | None:
    """Every row against its hash; returns when the first v2 row was written (None: none yet)."""
    expected_v1, prev_v1, since = 1, GENESIS_HASH, None
    after = 0
    while True:
        rows = conn_run(lambda conn, a=after: [dict(r._mapping) for r in conn.execute(
            select(decisions_t).where(decisions_t.c.seq > a).order_by(decisions_t.c.seq).limit(2000))])
        if not rows:
            break
        for row in rows:
            seq = row["seq"]
            version = row.get("hash_v") or 1
            try:
                good = entry_hash(row) == row["hash"]
            except ValueError:
                good = False
            if not good:
                report.problem(f"seq {seq} ({row['id']}): content does not match its hash (edited?)")
            if version == 1:  # the hash chain of rows written before checkpoints
                if seq != expected_v1:
                    report.problem(f"seq {expected_v1}..{seq - 1}: chained rows missing (deleted?)")
                if row["prev_hash"] != prev_v1:
                    report.problem(f"seq {seq} ({row['id']}): prev_hash does not match the previous row")
                expected_v1, prev_v1 = seq + 1, row["hash"]
            if version >= 2 and since is None:
                since = float(row["at"])
            if row["kind"] in REVIEW_KINDS and isinstance(row["arguments"], dict):
                subject = row["arguments"].get("approval") or row["arguments"].get("grant")
                actions.setdefault((row["kind"], str(subject)), []).append(row)
            if seq not in sealed:
                report.unsealed += 1
                at = float(row["at"])
                report.oldest_unsealed_at = at if report.oldest_unsealed_at is None else min(report.oldest_unsealed_at, at)
            report.checked += 1
            report.head_seq = seq
        after = rows[-1]["seq"]
        if progress:
            progress(len(rows))
    head = conn_run(lambda conn: conn.execute(select(chain_t.c.seq, chain_t.c.hash)).first())
    if head is not None and (head[0] != expected_v1 - 1 or head[1] != prev_v1):
        report.problem(f"the hash chain's head says seq {head[0]} but the chained rows end at seq {expected_v1 - 1} "
                       "(rows deleted from the end, or the head was edited)")
    if report.oldest_unsealed_at is not None and now - report.oldest_unsealed_at > max_unsealed:
        report.problem(f"{report.unsealed} decision(s) not sealed into the tree, the oldest for "
                       f"{now - report.oldest_unsealed_at:.0f} s (more than {max_unsealed:.0f} s): the sealer has not "
                       "run since, or rows were inserted behind it")
    return since


def _check_reviews(run: Callable[[Callable[[Connection], Any]], Any], report: LogReport, since: float | None,
                   actions: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
    """The approvals and grants tables must say what the log's reviewer records say (they are
    what the gateway acts on: a rewritten ``decided_by`` or a deleted grant is found here)."""
    from .grants import GRANTED_FIELDS

    def one(kind: str, subject: str) -> dict[str, Any] | None:
        found = actions.get((kind, subject), [])
        return found[-1] if found else None

    approvals = run(lambda conn: conn.execute(select(approvals_t).where(approvals_t.c.decided_by.is_not(None))).all())
    seen_approvals = set()
    for a in approvals:
        seen_approvals.add(a.id)
        if since is None or (a.decided_at or 0) < since:
            continue  # decided before reviewer actions were logged
        kind = "review/reject" if a.status == "rejected" else "review/approve"
        rec = one(kind, a.id)
        if rec is None:
            report.problem(f"approval {a.id}: {a.status} by {a.decided_by!r}, but the log has no {kind} record of it")
        elif rec["agent"] != a.decided_by or rec["arguments"].get("note") != a.note:
            report.problem(f"approval {a.id}: the table says {a.status} by {a.decided_by!r}, the log says by "
                           f"{rec['agent']!r} (rewritten?)")
    for kind, subject in actions:
        if kind in ("review/approve", "review/reject") and subject not in seen_approvals:
            report.problem(f"approval {subject}: decided in the log ({kind}) but not in the approvals table "
                           "(deleted or reset?)")
    grants = {g.id: g for g in run(lambda conn: conn.execute(select(grants_t)).all())}
    for (kind, subject), recs in actions.items():
        if kind == "grant/create" and subject not in grants:
            report.problem(f"grant {subject}: given by {recs[-1]['agent']!r} in the log but missing from the grants "
                           "table (deleted?)")
    for g in grants.values():
        if since is None or g.created_at < since:
            continue
        rec = one("grant/create", g.id)
        if rec is None:
            report.problem(f"grant {g.id}: in the grants table but the log has no grant/create record (inserted?)")
        elif any(rec["arguments"].get(k) != getattr(g, k) for k in GRANTED_FIELDS):
            changed = [k for k in GRANTED_FIELDS if rec["arguments"].get(k) != getattr(g, k)]
            report.problem(f"grant {g.id}: {', '.join(changed)} differ from what the log recorded (rewritten?)")
        for column, kind in (("revoked_by", "grant/revoke"), ("signed_off_by", "grant/signoff")):
            rec = one(kind, g.id)
            who = getattr(g, column)
            if (rec["agent"] if rec else None) != who:
                report.problem(f"grant {g.id}: {column} is {who!r} in the table but {rec['agent'] if rec else None!r} "
                               "in the log (rewritten?)")


def verify_log(
    run: Callable[[Callable[[Connection], Any]], Any], *, keys: Iterable[tuple[str, Ed25519PublicKey]] | None,
    origin: str, published: Iterable[str] = (), now: float, max_unsealed: float,
    progress: Callable[[int], None] | None = None,
) -> LogReport:
    """Check the whole log (``run`` runs a read on the database); see the module doc."""
    report = LogReport()
    keys = None if keys is None else list(keys)
    heads: dict[int, list[tuple[str, bytes]]] = {}  # size -> [(where, root)]

    stored = run(lambda conn: conn.execute(select(checkpoints_t).order_by(checkpoints_t.c.size)).all())
    for row in stored:
        report.checkpoints += 1
        if keys is None:  # the database alone: the roots it stores, signatures unchecked
            heads.setdefault(row.size, []).append((f"stored checkpoint {row.size}", bytes.fromhex(row.root)))
            continue
        try:
            cp = verify_checkpoint(row.note, keys)
        except CheckpointError as exc:
            report.problem(f"stored checkpoint {row.size}: {exc.message}")
            continue
        if cp.size != row.size or cp.root.hex() != row.root or cp.origin != origin:
            report.problem(f"stored checkpoint {row.size}: its columns do not match its signed note")
        heads.setdefault(cp.size, []).append((f"stored checkpoint {cp.size}", cp.root))
    for n, note in enumerate(published, 1):
        report.published += 1
        if keys is None:
            report.problem("published checkpoints need the audit public keys to be checked")
            break
        try:
            cp = verify_checkpoint(note, keys)
        except CheckpointError as exc:
            report.problem(f"published checkpoint #{n}: {exc.message}")
            continue
        if cp.origin != origin:
            report.problem(f"published checkpoint #{n}: origin {cp.origin!r} is not this log's ({origin!r})")
            continue
        heads.setdefault(cp.size, []).append((f"published checkpoint {cp.size} (#{n})", cp.root))
    report.newest_checkpoint = max(heads, default=0)

    frontier, sealed = Frontier(), set()

    def compare() -> None:
        for where, root in heads.get(frontier.size, ()):
            if frontier.root() != root:
                report.problem(f"{where}: the log's first {frontier.size} entries no longer hash to its root "
                               "(entries edited, inserted, removed or reordered since it was signed)")

    compare()  # a checkpoint of size 0
    after = -1
    while True:
        rows = run(lambda conn, a=after: conn.execute(
            select(leaves_t.c.idx, leaves_t.c.seq, leaves_t.c.hash, decisions_t.c.hash, decisions_t.c.hash_v)
            .select_from(leaves_t.outerjoin(decisions_t, decisions_t.c.seq == leaves_t.c.seq))
            .where(leaves_t.c.idx > a).order_by(leaves_t.c.idx).limit(5000)).all())
        if not rows:
            break
        for idx, seq, leaf_hex, row_hash, version in rows:
            if idx != frontier.size:
                report.problem(f"leaf {frontier.size}..{idx - 1}: missing from the tree")
            if row_hash is None:
                report.problem(f"leaf {idx}: decision seq {seq} is gone (deleted)")
            elif leaf_of(row_hash, version or 1).hex() != leaf_hex:
                report.problem(f"leaf {idx}: does not match decision seq {seq} (edited?)")
            sealed.add(seq)
            frontier.append(bytes.fromhex(leaf_hex))
            compare()
        after = rows[-1][0]
    report.sealed = frontier.size
    for size in sorted(heads):
        if size > frontier.size:
            for where, _ in heads[size]:
                report.problem(f"{where} covers {size} entries but the tree now holds {frontier.size} "
                               "(the log was truncated)")
    if not heads:
        report.notes.append("no checkpoint to compare with: only the rows' own hashes were checked")

    actions: dict[tuple[str, str], list[dict[str, Any]]] = {}
    since = _check_rows(run, report, sealed, now, max_unsealed, progress, actions)
    _check_reviews(run, report, since, actions)
    return report
