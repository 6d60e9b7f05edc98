"""Alembic environment for dashpersist's tables.

`SQLStorage` runs it with an open connection in ``config.attributes["connection"]``, inside
a transaction it holds (and commits). Run by hand (``alembic -x`` style), it connects to
the ``sqlalchemy.url`` of the Alembic config instead.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from dashpersist.storage.migrations import VERSION_TABLE


def _run(connection: Connection) -> None:
    context.configure(connection=connection, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url, or pass a connection in config.attributes")
    engine = create_engine(url)
    try:
        with engine.connect() as own_connection:
            _run(own_connection)
            own_connection.commit()
    finally:
        engine.dispose()


_main()
