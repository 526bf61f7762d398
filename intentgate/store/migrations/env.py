"""Alembic environment: run on the connection the gateway hands over, or on a URL.

The gateway (``intentgate.store.migrate``) passes its own connection in
``config.attributes["connection"]``, already inside a transaction that holds the
migration lock.  Run by hand (``alembic -x url=sqlite:///var/intentgate.db upgrade head``
from the project root, or ``alembic revision --autogenerate -m ...`` when a table changes)
it connects to the URL given with ``-x url=...``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from intentgate.store.tables import metadata
from intentgate.store.textsearch import UNMODELLED

config = context.config


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # ALTER TABLE via copy on SQLite
        compare_type=True,
        # the text index's tables are dialect-specific (FTS5, pg_trgm): made by hand, not by autogenerate
        include_name=lambda name, kind, _parent: kind != "table" or name not in UNMODELLED,
    )
    with context.begin_transaction():
        context.run_migrations()


given = config.attributes.get("connection")
if given is not None:
    _run(given)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database with: alembic -x url=<SQLAlchemy URL> ...")
    engine = create_engine(url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
