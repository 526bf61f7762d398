"""Break-glass grants: time-boxed exceptions for one agent and one tool or intent.

A grant lets that agent's calls through where the workflow or the policy would deny or hold
them (never where the task itself fails: unknown, not theirs, ended, expired), and only calls
that name a real step of the task's intent with that step's own tool: a grant on an intent
covers the tools of its steps, a grant on a tool that tool, and neither turns a made-up step
or another tool into an allow.  A step with ``approval: required`` stays held unless the
grant says it overrides approvals.  Each use is
counted in the same transaction as the decision that used it, with one conditional UPDATE,
so an expired or revoked grant can never be used, on any replica.  Every grant stays in the
"needs review" list until a reviewer signs it off.
"""

from __future__ import annotations

import time

from sqlalchemy import Connection, or_, select, update

from .db import Database
from .ledger import append_decision, review_record
from .records import GrantRecord
from .tables import GrantRow

__all__ = ["GrantConflict", "GrantStore", "use_grant"]

grants_t = GrantRow.__table__


class GrantConflict(Exception):
    """A grant could not be changed: ``unknown``, ``already signed off`` or ``already revoked``."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def use_grant(conn: Connection, grant_id: str, decision_id: str, now: float) -> bool:
    """Count one use of an active grant; False when it expired or was revoked meanwhile."""
    t = grants_t.c
    res = conn.execute(
        update(grants_t)
        .where(t.id == grant_id, t.expires_at > now, t.revoked_at.is_(None))
        .values(uses=t.uses + 1, last_used_decision=decision_id)
    )
    return res.rowcount == 1


# what a grant/create record holds of the grant (what `audit verify` holds the grants table to)
GRANTED_FIELDS = ("agent", "tool", "intent", "reason", "created_by", "created_at", "expires_at", "overrides_approval")


def _granted(grant: GrantRecord) -> dict[str, object]:
    return {k: getattr(grant, k) for k in GRANTED_FIELDS}


def _record(row: object) -> GrantRecord:
    return GrantRecord.model_validate(dict(row._mapping))  # type: ignore[attr-defined]


class GrantStore:
    """Grants in the gateway's database (each method one transaction).

    Denied calls ask :meth:`may_have_grant` first: the set of agents holding an unrevoked,
    unexpired grant, read at most once per ``CACHE_SECONDS`` (and at once after a change made
    through this store), so that a flood of denials costs no extra query.  A grant created
    through another gateway replica takes effect here within ``CACHE_SECONDS``.
    """

    CACHE_SECONDS = 1.0

    def __init__(self, database: Database) -> None:
        self.db = database
        self._agents: frozenset[str] = frozenset()
        self._agents_read_at = float("-inf")

    async def may_have_grant(self, agent: str, now: float) -> bool:
        if time.monotonic() - self._agents_read_at > self.CACHE_SECONDS:

            def op(conn: Connection) -> frozenset[str]:
                t = grants_t.c
                rows = conn.execute(select(t.agent).where(t.expires_at > now, t.revoked_at.is_(None)).distinct())
                return frozenset(r[0] for r in rows)

            self._agents = await self.db.run(op, read_only=True)
            self._agents_read_at = time.monotonic()
        return agent in self._agents

    def changed(self) -> None:
        """Forget the cached set (a grant was created or revoked, here or by the reviewer service)."""
        self._agents_read_at = float("-inf")

    async def create(self, grant: GrantRecord) -> GrantRecord:
        def op(conn: Connection) -> None:
            conn.execute(grants_t.insert(), grant.model_dump())
            append_decision(conn, review_record("grant/create", actor=grant.created_by, at=grant.created_at,
                                                subject={"grant": grant.id, **_granted(grant)}, tool=grant.tool,
                                                reason=None))

        await self.db.run(op)
        self.changed()
        return grant

    async def get(self, grant_id: str) -> GrantRecord | None:
        def op(conn: Connection) -> GrantRecord | None:
            row = conn.execute(select(grants_t).where(grants_t.c.id == grant_id)).first()
            return _record(row) if row else None

        return await self.db.run(op, read_only=True)

    async def find_active(self, *, agent: str, tool: str, intent: str, now: float) -> GrantRecord | None:
        """The active grant covering this agent's call to ``tool`` under ``intent``, if any."""

        def op(conn: Connection) -> GrantRecord | None:
            t = grants_t.c
            row = conn.execute(
                select(grants_t)
                .where(t.agent == agent, t.expires_at > now, t.revoked_at.is_(None),
                       or_(t.tool == tool, t.intent == intent))
                .order_by(t.overrides_approval.desc(), t.created_at)  # the broadest first
                .limit(1)
            ).first()
            return _record(row) if row else None

        return await self.db.run(op, read_only=True)

    async def list(self, *, needs_review: bool = False, active_at: float | None = None,
                   limit: int = 200) -> list[GrantRecord]:
        def op(conn: Connection) -> list[GrantRecord]:
            t = grants_t.c
            q = select(grants_t).order_by(t.created_at.desc()).limit(limit)
            if needs_review:
                q = q.where(t.signed_off_at.is_(None))
            if active_at is not None:
                q = q.where(t.expires_at > active_at, t.revoked_at.is_(None))
            return [_record(r) for r in conn.execute(q)]

        return await self.db.run(op, read_only=True)

    async def sign_off(self, grant_id: str, *, reviewer: str, now: float, note: str | None = None) -> GrantRecord:
        """Sign a grant off after review, once."""

        def op(conn: Connection) -> GrantRecord:
            t = grants_t.c
            res = conn.execute(
                update(grants_t).where(t.id == grant_id, t.signed_off_at.is_(None))
                .values(signed_off_by=reviewer, signed_off_at=now, sign_off_note=note)
            )
            row = conn.execute(select(grants_t).where(t.id == grant_id)).first()
            if row is None:
                raise GrantConflict("unknown")
            if res.rowcount != 1:
                raise GrantConflict("already signed off")
            append_decision(conn, review_record("grant/signoff", actor=reviewer, at=now,
                                                subject={"grant": grant_id, "note": note}))
            return _record(row)

        return await self.db.run(op)

    async def revoke(self, grant_id: str, *, reviewer: str, now: float) -> GrantRecord:
        """End a grant before its time; it can no longer be used."""

        def op(conn: Connection) -> GrantRecord:
            t = grants_t.c
            res = conn.execute(
                update(grants_t).where(t.id == grant_id, t.revoked_at.is_(None))
                .values(revoked_at=now, revoked_by=reviewer)
            )
            row = conn.execute(select(grants_t).where(t.id == grant_id)).first()
            if row is None:
                raise GrantConflict("unknown")
            if res.rowcount != 1:
                raise GrantConflict("already revoked")
            append_decision(conn, review_record("grant/revoke", actor=reviewer, at=now, subject={"grant": grant_id}))
            return _record(row)

        revoked = await self.db.run(op)
        self.changed()
        return revoked
