"""Schema revision 0002 (activity log, widget cache): a 0001 database upgrades on open."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config

from dashpersist._canonical import canonical_json, checksum
from dashpersist.activity import ActivityEntry, activity_log_for
from dashpersist.storage import DocumentKey
from dashpersist.storage.migrations import HEAD_REVISION, KNOWN_REVISIONS, SCRIPT_LOCATION
from dashpersist.storage.sql import SQLStorage
from dashpersist.types import JsonObject
from dashpersist.widget_cache import widget_cache_for


def create_at_revision(url: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION).replace("%", "%%"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(config, revision)


def test_a_database_at_revision_0001_upgrades_to_head_on_open_with_its_documents_intact(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    create_at_revision(url, "0001")
    document: JsonObject = {"widgets": [{"id": "w1", "type": "chart"}], "theme": "dark"}
    digest = checksum(document)
    body = canonical_json(document).decode()
    written_at = "2026-01-01T09:00:00.000000+00:00"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO dashpersist_documents VALUES (?, ?, ?, ?, ?, ?, ?)",
            ("alice", "default", 1, digest, 1, body, written_at),
        )
        conn.execute(
            "INSERT INTO dashpersist_versions (user_id, layout_id, version, checksum, "
            "parent_checksum, created_at, change_type, schema_version, snapshot) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("alice", "default", 1, digest, None, written_at, "manual", 1, body),
        )
        before = conn.execute("SELECT version_num FROM dashpersist_alembic_version").fetchall()
    conn.close()

    storage = SQLStorage(url)
    stored = storage.read(DocumentKey("alice"))
    history = storage.versions(DocumentKey("alice"))
    log = activity_log_for(storage)
    log.record(ActivityEntry(action="saved", user_id="alice", version=2, at=datetime.now(UTC)))
    cache = widget_cache_for(storage)
    cache.put("alice", "w1", {"rows": 3}, ttl=60)

    assert before == [("0001",)]
    assert stored is not None
    assert (stored.document, stored.version, stored.checksum) == (document, 1, digest)
    assert [(record.version, record.checksum) for record in history] == [(1, digest)]
    assert [entry.version for entry in log.entries("alice").entries] == [2]
    assert cache.get("alice", "w1") == {"rows": 3}
    storage.close()
    with sqlite3.connect(path) as conn:
        after = conn.execute("SELECT version_num FROM dashpersist_alembic_version").fetchall()
    conn.close()
    assert after == [(HEAD_REVISION,)]
    assert HEAD_REVISION == KNOWN_REVISIONS[-1] == "0002"
