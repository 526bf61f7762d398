"""Shared fixtures: the project's own intents and policy, real stores in tmp dirs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from intentgate.clock import FrozenClock
from intentgate.intents import IntentRegistry, load_intents
from intentgate.keys import KeySet
from intentgate.tokens import ActionTokenIssuer

ROOT = Path(__file__).resolve().parent.parent
INTENTS_DIR = ROOT / "intents"
POLICY_DIR = ROOT / "opa"


# a fixed "now" for token, key and identity tests (2027-01-15T08:00:00Z)
NOW = 1_800_000_000.0


@pytest.fixture(scope="session")
def registry() -> IntentRegistry:
    return load_intents(INTENTS_DIR)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
def keyset(tmp_path: Path, clock: FrozenClock) -> KeySet:
    return KeySet.open_or_create(tmp_path / "keys", clock=clock)


@pytest.fixture
def issuer(keyset: KeySet, clock: FrozenClock) -> ActionTokenIssuer:
    return ActionTokenIssuer(keyset, clock=clock)


# ----- stores: one suite for every backend -------------------------------------------
import os  # noqa: E402
import uuid  # noqa: E402
from collections.abc import AsyncIterator, Iterator  # noqa: E402

from sqlalchemy import create_engine, text  # noqa: E402

from intentgate.store import Store  # noqa: E402

PG_URL = os.environ.get("INTENTGATE_TEST_PG", "postgresql+psycopg://root@127.0.0.1:5432/test")
_pg_checked: dict[str, str | None] = {}


def postgres_unavailable() -> str | None:
    """Why PostgreSQL tests cannot run here, or None when they can."""
    if "why" not in _pg_checked:
        try:
            eng = create_engine(PG_URL, connect_args={"connect_timeout": 3})
            with eng.connect() as c:
                c.execute(text("select 1"))
            eng.dispose()
            _pg_checked["why"] = None
        except Exception as exc:  # noqa: BLE001
            _pg_checked["why"] = f"no PostgreSQL reachable at {PG_URL} ({type(exc).__name__})"
    return _pg_checked["why"]


def _fresh_pg_schema(prefix: str) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards (skips where no
    PostgreSQL is reachable, or fails when INTENTGATE_REQUIRE_PG is set)."""
    why = postgres_unavailable()
    if why:
        if os.environ.get("INTENTGATE_REQUIRE_PG"):
            pytest.fail(why + " but INTENTGATE_REQUIRE_PG is set")
        pytest.skip(why)
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as c:
        c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A fresh PostgreSQL schema for one test."""
    yield from _fresh_pg_schema("t")


@pytest.fixture(scope="module")
def pg_module_url() -> Iterator[str]:
    """A fresh PostgreSQL schema shared by a module's tests (e.g. several gateway processes)."""
    yield from _fresh_pg_schema("r")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'intentgate.db'}"
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = Store.open(db_url, timeout=10.0, pool_size=4)
    yield s
    s.close()


def strict_refund_policy(tmp_path: Path) -> Path:
    """A copy of opa/ whose refund limits (10 EUR, held above 5) turn most refunds into denials:
    the candidate policy of the replay tests."""
    candidate = tmp_path / "candidate"
    shutil.copytree(POLICY_DIR, candidate)
    data = candidate / "intentgate" / "data.json"
    doc = json.loads(data.read_text())
    doc["limits"]["refund"] = {"max": {"EUR": 10}, "hold_above": {"EUR": 5}}
    data.write_text(json.dumps(doc))
    return candidate


@pytest.fixture(scope="session")
def opa_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The shared OPA server: ``$INTENTGATE_OPA_URL`` (the one `.ci/run` starts), or one started
    from the OPA binary for this session; skips (fails under ``INTENTGATE_REQUIRE_OPA``) without."""
    from tests.opa import OpaProcess, opa_or_skip, reachable

    url = os.environ.get("INTENTGATE_OPA_URL", "")
    if url:
        if not reachable(url):
            opa_or_skip(f"no OPA server reachable at $INTENTGATE_OPA_URL={url}")
        yield url.rstrip("/")
        return
    server = OpaProcess(tmp_path_factory.mktemp("opa")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def recorded_inputs(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """1,000 policy inputs recorded by the real pipeline (see tests/recorded_inputs.py)."""
    import asyncio

    from tests.recorded_inputs import record_policy_inputs

    return asyncio.run(record_policy_inputs(tmp_path_factory.mktemp("recorded"), 1000))
