"""Open a storage backend from a URL string."""

from __future__ import annotations

from pathlib import Path

from dashpersist.errors import ConfigurationError
from dashpersist.storage.memory import MemoryStorage
from dashpersist.storage.protocol import Storage

__all__ = ["open_storage"]

_SQL_SCHEMES = ("sqlite", "postgresql", "postgres")


def open_storage(url: str) -> Storage:
    """Return the backend a URL names.

    - ``sqlite:///relative.db``, ``sqlite:////absolute/path.db``: `SQLStorage` on SQLite
    - ``postgresql://user@host/db`` (or ``postgresql+psycopg://``): `SQLStorage` on PostgreSQL
    - ``jsonfile:///absolute/folder`` or ``jsonfile://relative/folder``: `JSONFileStorage`
    - ``memory://``: a new, empty `MemoryStorage`

    Raises `ConfigurationError` for any other scheme.
    """
    scheme, separator, rest = url.partition("://")
    base_scheme = scheme.split("+", 1)[0].lower()
    if not separator:
        raise ConfigurationError(
            "a store URL looks like 'sqlite:///dash.db', 'postgresql://host/db', "
            "'jsonfile:///path/to/folder' or 'memory://'"
        )
    if base_scheme in _SQL_SCHEMES:
        from dashpersist.storage.sql import SQLStorage

        return SQLStorage(url)
    if base_scheme == "jsonfile":
        from dashpersist.storage.jsonfile import JSONFileStorage

        return JSONFileStorage(Path(rest))
    if base_scheme == "memory":
        return MemoryStorage()
    raise ConfigurationError(f"unknown store URL scheme {scheme!r}")
