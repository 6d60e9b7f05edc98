"""Fixtures of the network-fault tests: a fault proxy in front of the suite's PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from tests.faults.proxy import FaultProxy
from tests.postgres import PostgresServer


@pytest.fixture
def fault_proxy(postgres_server: PostgresServer) -> Iterator[FaultProxy]:
    """A `FaultProxy` on 127.0.0.1 in front of the server's unix socket, stopped after."""
    if not postgres_server.is_running():
        postgres_server.start()
    proxy = FaultProxy(postgres_server.socket_dir / ".s.PGSQL.5432").start()
    yield proxy
    proxy.stop()


@pytest.fixture
def proxied_url(fault_proxy: FaultProxy, postgres_url: str) -> str:
    """The URL of a fresh, empty database, reached over TCP through `fault_proxy`.

    The server's trust authentication covers it: the proxy reaches the server over its
    unix socket, so the server sees a local connection.
    """
    database = make_url(postgres_url).database
    return f"postgresql+psycopg://postgres@127.0.0.1:{fault_proxy.port}/{database}"
