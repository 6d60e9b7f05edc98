"""A PostgreSQL URL's connect_timeout (libpq's option) is honoured, never silently overridden.

No server is needed: the connection attempt is stopped in SQLAlchemy's ``do_connect``
hook, after the arguments the driver would get are known.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, event

from dashpersist.errors import ConfigurationError
from dashpersist.notify import ChangeListener
from dashpersist.storage._deadline import DEFAULT_CONNECT_TIMEOUT
from dashpersist.storage._sqlengines import make_engine

pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")

URL = "postgresql://nobody@127.0.0.1:1/nothing"


class _StoppedError(Exception):
    pass


def _connect_arguments(url: str, connect_timeout: float | None) -> tuple[dict[str, object], float]:
    """Return what psycopg would be called with, and the pool's wait limit."""
    engine = make_engine(url, 5.0, connect_timeout)
    seen: dict[str, object] = {}

    @event.listens_for(engine, "do_connect")
    def stop(dialect: object, record: object, args: object, kwargs: dict[str, object]) -> None:
        seen.update(kwargs)
        raise _StoppedError

    try:
        with pytest.raises(_StoppedError):
            engine.connect()
        return seen, engine.pool.timeout()  # type: ignore[attr-defined]
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "given", "expected"),
    [
        (URL, None, DEFAULT_CONNECT_TIMEOUT),
        (URL, 7.0, 7.0),
        (f"{URL}?connect_timeout=3", None, 3.0),
        (f"{URL}?connect_timeout=3", 3.0, 3.0),  # the same value twice is not a conflict
        (f"{URL}?connect_timeout=2.5&operation_timeout=0", None, 2.5),
    ],
)
def test_the_connect_timeout_bounds_libpq_and_the_pool(
    url: str, given: float | None, expected: float
) -> None:
    arguments, pool_wait = _connect_arguments(url, given)

    assert pool_wait == expected
    assert int(str(arguments["connect_timeout"])) == max(2, -(-expected // 1))


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf", "3&connect_timeout=4"])
def test_a_url_connect_timeout_that_is_not_seconds_is_refused(value: str) -> None:
    with pytest.raises(ConfigurationError, match="connect_timeout"):
        make_engine(f"{URL}?connect_timeout={value}", 5.0, None)


def test_a_connect_timeout_given_twice_differently_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="given twice"):
        make_engine(f"{URL}?connect_timeout=3", 5.0, 4.0)
    with pytest.raises(ConfigurationError, match="given twice"):
        ChangeListener(f"{URL}?connect_timeout=3", lambda change: None, connect_timeout=4.0)


def test_the_change_listener_takes_the_url_connect_timeout() -> None:
    listener = ChangeListener(f"{URL}?connect_timeout=9", lambda change: None)
    try:
        assert listener._connect_args["connect_timeout"] == 9
    finally:
        listener.close()


def test_libpq_wait_for_ever_is_refused_with_a_reason() -> None:
    with pytest.raises(ConfigurationError, match="wait for ever"):
        make_engine(f"{URL}?connect_timeout=0", 5.0, None)


def test_a_listener_on_a_host_engine_with_connect_timeout_zero_uses_the_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The host built the engine (libpq's 0 in its URL) and SQLStorage took it as it is:
    # the listener the manager starts for it must not fail on it.
    engine = create_engine(f"{URL.replace('postgresql', 'postgresql+psycopg')}?connect_timeout=0")
    listener = ChangeListener(engine, lambda change: None)
    try:
        assert listener._connect_args["connect_timeout"] == DEFAULT_CONNECT_TIMEOUT
        assert "ignoring the engine URL's connect_timeout" in caplog.text
    finally:
        listener.close()
        engine.dispose()


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf")])
def test_a_listener_connect_timeout_argument_that_is_not_seconds_is_refused(
    value: float,
) -> None:
    with pytest.raises(ConfigurationError, match="connect_timeout must be"):
        ChangeListener(URL, lambda change: None, connect_timeout=value)
