"""The SQL schema of `SQLStorage`, as Alembic migrations shipped inside the package.

`SQLStorage` runs them itself when it opens a database that is behind; nobody needs the
``alembic`` command. The revision list is written out here too, so that opening an
up-to-date database costs one SELECT and never loads Alembic.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Connection

__all__ = ["HEAD_REVISION", "KNOWN_REVISIONS", "VERSION_TABLE", "upgrade_schema"]

VERSION_TABLE = "dashpersist_alembic_version"
"""Where Alembic records the schema revision (not its default name, so that a host's own
Alembic history in the same database is left alone)."""

KNOWN_REVISIONS = ("0001", "0002")
"""Every revision in ``versions/``, oldest first; a test checks it against Alembic's view."""

HEAD_REVISION = KNOWN_REVISIONS[-1]

SCRIPT_LOCATION = Path(__file__).parent


def upgrade_schema(connection: Connection) -> None:
    """Bring the schema on *connection* to `HEAD_REVISION` inside its open transaction.

    The caller holds the lock that keeps other processes from upgrading at the same time,
    and commits.
    """
    from alembic import command
    from alembic.config import Config

    config = Config()
    # The option goes through configparser interpolation: a '%' in the path must be doubled.
    config.set_main_option("script_location", str(SCRIPT_LOCATION).replace("%", "%%"))
    config.attributes["connection"] = connection
    command.upgrade(config, HEAD_REVISION)
