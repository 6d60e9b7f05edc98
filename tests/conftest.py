"""Fixtures shared by the whole suite: backends, the PostgreSQL server, hypothesis profiles."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from dashpersist.storage import MemoryStorage, Storage
from tests.postgres import REQUIRE_ENV, PostgresServer, start_server

settings.register_profile(
    "ci",
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", max_examples=100, deadline=None, print_blob=True)
settings.register_profile("nightly", max_examples=500, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _sqlite(request: pytest.FixtureRequest, tmp: Path) -> Storage:
    from dashpersist.storage.sql import SQLStorage

    return SQLStorage(f"sqlite:///{tmp / 'dash.db'}")


def _postgres(request: pytest.FixtureRequest, tmp: Path) -> Storage:
    from dashpersist.storage.sql import SQLStorage

    return SQLStorage(request.getfixturevalue("postgres_url"))


def _jsonfile(request: pytest.FixtureRequest, tmp: Path) -> Storage:
    from dashpersist.storage.jsonfile import JSONFileStorage

    return JSONFileStorage(tmp / "layouts")


def _memory(request: pytest.FixtureRequest, tmp: Path) -> Storage:
    return MemoryStorage()


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Storage]] = {
    "jsonfile": _jsonfile,
    "memory": _memory,
    "postgres": _postgres,
    "sqlite": _sqlite,
}
DURABLE_BACKENDS = ["jsonfile", "postgres", "sqlite"]
"""Backends whose data outlives the process (crash and multi-process tests)."""


def _marks(name: str) -> list[pytest.MarkDecorator]:
    return [pytest.mark.postgres] if name == "postgres" else []


def backend_params(names: list[str]) -> list[object]:
    """Return pytest params for *names*, marking the PostgreSQL one."""
    return [pytest.param(name, marks=_marks(name), id=name) for name in sorted(names)]


@pytest.fixture(autouse=True)
def _isolated_user_data(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep default stores and outboxes out of the real user data folder."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))


@pytest.fixture(autouse=True)
def _close_managers() -> Iterator[None]:
    """Close the managers a test left open, so their threads end and queued saves surface."""
    from dashpersist.manager import _LIVE_MANAGERS

    before = set(_LIVE_MANAGERS)
    yield
    for manager in set(_LIVE_MANAGERS) - before:
        manager.close()


@pytest.fixture(params=backend_params(list(BACKENDS)))
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """Each backend in turn, empty, closed after the test."""
    store = BACKENDS[request.param](request, tmp_path)
    yield store
    store.close()


@pytest.fixture(params=backend_params(DURABLE_BACKENDS))
def durable_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL (see `dashpersist.open_storage`) for each backend whose data outlives
    the process; child processes open it by URL."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'dash.db'}"
    return f"jsonfile://{tmp_path / 'layouts'}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the whole session.

    Skips with the reason when no server binaries exist; under
    DASHPERSIST_REQUIRE_POSTGRES=1 (CI) that is a failure instead.
    """
    server = start_server()
    if isinstance(server, str):
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {server}")
        pytest.skip(server)
    yield server
    server.destroy()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The SQLAlchemy URL of a fresh, empty database on the throwaway server."""
    if not postgres_server.is_running():
        postgres_server.start()
    return postgres_server.create_database()
