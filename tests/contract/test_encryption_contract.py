"""Field encryption on every backend (S15): no plaintext secret in any stored byte, and
ciphertext that was moved or altered in the store itself fails to load.

The raw bytes checked are every file of the store (the SQLite database with its -wal and
-shm files, every file of the JSON folder, every outbox file) and, for PostgreSQL, the
``body``, ``patch`` and ``snapshot`` columns as the server holds them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from sqlalchemy.engine import make_url

from dashpersist import PersistenceConfig, PersistenceManager
from dashpersist._canonical import canonical_json
from dashpersist.encryption import KeyRing, is_envelope
from dashpersist.errors import DecryptionError
from dashpersist.storage import DocumentKey, MemoryStorage, Storage
from dashpersist.storage.jsonfile import JSONFileStorage
from dashpersist.storage.sql import SQLStorage
from dashpersist.testing import FaultyStorage
from dashpersist.types import JsonObject, JsonValue
from tests.conftest import BACKENDS, DURABLE_BACKENDS, backend_params

KEYRING = KeyRing({"k1": bytes(range(32))})
FIELDS = ("widgets[*].settings.api_key", "widgets[*].settings.token")
MARKER = b"PLAIN-SECRET"
"""Every secret of these tests contains it; no stored byte may."""


def secret(name: str) -> str:
    return f"sk-{name}-{MARKER.decode()}-{name}"


def config(tmp_path: Path, outbox: str) -> PersistenceConfig:
    return PersistenceConfig(
        enable_encryption=True,
        auto_save=False,
        encrypted_fields=FIELDS,
        keyframe_interval=3,
        outbox_dir=tmp_path / outbox,
        retry_attempts=1,
    )


def manager(
    store: Storage, tmp_path: Path, *, outbox: str = "outbox-laptop", device_id: str = "laptop"
) -> PersistenceManager:
    return PersistenceManager(
        store,
        config=config(tmp_path, outbox),
        keyring=KEYRING,
        device_id=device_id,
        start_threads=False,
    )


def layout(
    first: str, second: str, *, title: str = "Sales", token: str | None = None
) -> JsonObject:
    second_settings: dict[str, JsonValue] = {"api_key": second}
    if token is not None:
        second_settings["token"] = token
    return {
        "widgets": [
            {"id": "w1", "type": "chart", "title": title, "settings": {"api_key": first}},
            {"id": "w2", "type": "chart", "title": "Costs", "settings": second_settings},
        ],
        "theme": "dark",
    }


def secrets_of(pm: PersistenceManager, user_id: str, version: int | None = None) -> list[Any]:
    loaded = pm.load_layout(user_id) if version is None else pm.get_version(user_id, version)
    assert loaded is not None
    return [widget.settings.get("api_key") for widget in loaded.widgets]


# -- reading the store's raw bytes -------------------------------------------------------


class RawStore:
    """The bytes a backend holds, and the stored document of a key, read and edited
    behind the backend's back (as someone with access to the files or rows could)."""

    def __init__(self, storage: Storage, tmp_path: Path) -> None:
        self.storage = storage
        self.tmp_path = tmp_path

    def all_bytes(self) -> bytes:
        """Return every byte of the store and of every outbox under the test folder."""
        outboxes = [p for p in self.tmp_path.glob("outbox-*/**/*") if p.is_file()]
        return b"\n".join([self._store_bytes(), *(p.read_bytes() for p in outboxes)])

    def outbox_files(self) -> list[Path]:
        return [p for p in self.tmp_path.glob("outbox-*/**/*") if p.is_file()]

    def _store_bytes(self) -> bytes:
        store = self.storage
        if isinstance(store, JSONFileStorage):
            files = [p for p in store.root.rglob("*") if p.is_file()]
            assert files
            return b"\n".join(p.read_bytes() for p in files)
        if self._is_sqlite():
            files = [p for p in self.tmp_path.glob("dash.db*") if p.is_file()]
            assert {p.name for p in files} >= {"dash.db", "dash.db-wal"}
            return b"\n".join(p.read_bytes() for p in files)
        if isinstance(store, SQLStorage):
            with self._postgres() as conn:
                bodies = conn.execute("SELECT body::text FROM dashpersist_documents").fetchall()
                history = conn.execute(
                    "SELECT patch, snapshot FROM dashpersist_versions"
                ).fetchall()
            texts = [row[0] for row in bodies] + [v for row in history for v in row if v]
            assert texts
            return "\n".join(texts).encode()
        assert isinstance(store, MemoryStorage)
        # No bytes of its own: the canonical form of everything it holds.
        parts = []
        for user_id in store.user_ids():
            for layout_id in store.layout_ids(user_id):
                key = DocumentKey(user_id, layout_id)
                current = store.read(key)
                assert current is not None
                parts.append(canonical_json(current.document))
                for record in store.versions(key, limit=1000):
                    parts.append(canonical_json(cast(JsonValue, record.patch)))
                    parts.append(canonical_json(cast(JsonValue, record.snapshot)))
        return b"\n".join(parts)

    def document(self, key: DocumentKey) -> JsonObject:
        """Return the stored (encrypted) current document of *key*, read raw."""
        store = self.storage
        ids = (key.user_id, key.layout_id)
        if isinstance(store, JSONFileStorage):
            _, body = self._split(store.document_path(key).read_bytes())
            return cast(JsonObject, orjson.loads(body))
        if self._is_sqlite():
            with contextlib.closing(sqlite3.connect(self.tmp_path / "dash.db")) as conn:
                row = conn.execute(
                    "SELECT body FROM dashpersist_documents WHERE user_id = ? AND layout_id = ?",
                    ids,
                ).fetchone()
        else:
            with self._postgres() as conn:
                row = conn.execute(
                    "SELECT body::text FROM dashpersist_documents "
                    "WHERE user_id = %s AND layout_id = %s",
                    ids,
                ).fetchone()
        return cast(JsonObject, orjson.loads(row[0]))

    def set_document(self, key: DocumentKey, document: JsonObject) -> None:
        """Overwrite *key*'s stored document in place, keeping the file well formed (with a
        matching checksum) so that only the ciphertext can give the edit away."""
        store = self.storage
        body = canonical_json(document)
        digest = hashlib.sha256(body).hexdigest()
        if isinstance(store, JSONFileStorage):
            path = store.document_path(key)
            header, _ = self._split(path.read_bytes())
            header["checksum"] = digest
            path.write_bytes(canonical_json(header)[:-1] + b',"document":' + body + b"}\n")
            return
        args = (body.decode(), digest, key.user_id, key.layout_id)
        if self._is_sqlite():
            with contextlib.closing(sqlite3.connect(self.tmp_path / "dash.db")) as conn:
                changed = conn.execute(
                    "UPDATE dashpersist_documents SET body = ?, checksum = ? "
                    "WHERE user_id = ? AND layout_id = ?",
                    args,
                ).rowcount
                conn.commit()
        else:
            with self._postgres() as conn:
                changed = conn.execute(
                    "UPDATE dashpersist_documents SET body = %s::jsonb, checksum = %s "
                    "WHERE user_id = %s AND layout_id = %s",
                    args,
                ).rowcount
        assert changed == 1

    def _is_sqlite(self) -> bool:
        return isinstance(self.storage, SQLStorage) and self.storage.engine.dialect.name == "sqlite"

    @staticmethod
    def _split(data: bytes) -> tuple[dict[str, JsonValue], bytes]:
        marker = data.index(b',"document":')
        return orjson.loads(data[:marker] + b"}"), data[marker + len(b',"document":') : -2]

    def _postgres(self) -> Any:
        import psycopg

        assert isinstance(self.storage, SQLStorage)
        url = make_url(self.storage.engine.url)
        return psycopg.connect(
            host=str(url.query["host"]), user=url.username, dbname=url.database, autocommit=True
        )


@pytest.fixture(params=backend_params(DURABLE_BACKENDS))
def durable_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """Each backend whose stored bytes can be read and edited behind its back."""
    store = BACKENDS[request.param](request, tmp_path)
    yield store
    store.close()


# -- no plaintext in any stored byte -------------------------------------------------------


def test_no_stored_byte_holds_a_plaintext_secret_through_edits_rollback_merge_and_outbox(
    storage: Storage, tmp_path: Path
) -> None:
    raw = RawStore(storage, tmp_path)
    faulty = FaultyStorage(storage)
    laptop = manager(faulty, tmp_path)
    expected: dict[int, list[str]] = {}

    def save(pm: PersistenceManager, document: JsonObject) -> int:
        result = pm.save_layout("alice", document, immediate=True)
        assert result.success and result.version is not None
        return result.version

    expected[save(laptop, layout(secret("a1"), secret("b1")))] = [secret("a1"), secret("b1")]
    expected[save(laptop, layout(secret("a1"), secret("b1"), title="Q2"))] = [
        secret("a1"),
        secret("b1"),
    ]
    expected[save(laptop, layout(secret("a2"), secret("b1"), token=secret("t1")))] = [
        secret("a2"),
        secret("b1"),
    ]
    laptop.rollback_to_version("alice", 1)
    expected[4] = [secret("a1"), secret("b1")]
    phone = manager(storage, tmp_path, outbox="outbox-phone", device_id="phone")
    phone.load_layout("alice")
    expected[save(laptop, layout(secret("a3"), secret("b1"), title="Q3"))] = [
        secret("a3"),
        secret("b1"),
    ]
    merged = phone.save_layout("alice", layout(secret("a1"), secret("b2")), immediate=True)
    assert merged.merge is not None and merged.version == 6
    expected[6] = [secret("a3"), secret("b2")]
    faulty.go_offline()
    parked = laptop.save_layout("alice", layout(secret("a4"), secret("b2")), immediate=True)

    assert parked.source == "outbox"
    assert raw.outbox_files()
    assert MARKER not in raw.all_bytes()
    faulty.go_online()
    assert laptop.replay_outbox() == 1
    expected[7] = [secret("a4"), secret("b2")]
    assert MARKER not in raw.all_bytes()
    reader = manager(storage, tmp_path, outbox="outbox-reader", device_id="reader")
    for version, secrets in expected.items():
        assert secrets_of(reader, "alice", version) == secrets
    assert secrets_of(reader, "alice") == expected[7]
    assert reader.verify("alice").ok


# -- ciphertext moved or altered in the store ------------------------------------------------


def envelope_at(document: JsonObject, widget: int, field: str = "api_key") -> str:
    value = cast(Any, document)["widgets"][widget]["settings"][field]
    assert is_envelope(value)
    return value


def with_envelope(
    document: JsonObject, widget: int, value: str, field: str = "api_key"
) -> JsonObject:
    changed = cast(Any, orjson.loads(orjson.dumps(document)))
    changed["widgets"][widget]["settings"][field] = value
    return cast(JsonObject, changed)


def flip_bit(envelope: str, where: str) -> str:
    prefix, _, encoded = envelope.rpartition(":")
    payload = bytearray(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    index = {"nonce": 3, "ciphertext": 12 + 2, "tag": len(payload) - 5}[where]
    payload[index] ^= 0x01
    return f"{prefix}:{base64.urlsafe_b64encode(payload).rstrip(b'=').decode()}"


def tampered(raw: RawStore, case: str) -> tuple[DocumentKey, str]:
    """Apply *case* to the stored documents; return the key and field path that must fail."""
    alice, alice_sales, bob = (
        DocumentKey("alice"),
        DocumentKey("alice", "sales"),
        DocumentKey("bob"),
    )
    source = raw.document(alice)
    if case == "to_another_user":
        raw.set_document(bob, with_envelope(raw.document(bob), 0, envelope_at(source, 0)))
        return bob, "widgets[w1].settings.api_key"
    if case == "to_another_layout":
        target = with_envelope(raw.document(alice_sales), 0, envelope_at(source, 0))
        raw.set_document(alice_sales, target)
        return alice_sales, "widgets[w1].settings.api_key"
    if case == "to_another_field":
        raw.set_document(alice, with_envelope(source, 1, envelope_at(source, 0), "token"))
        return alice, "widgets[w2].settings.token"
    if case == "to_another_widget":
        raw.set_document(alice, with_envelope(source, 1, envelope_at(source, 0)))
        return alice, "widgets[w2].settings.api_key"
    raw.set_document(alice, with_envelope(source, 0, flip_bit(envelope_at(source, 0), case)))
    return alice, "widgets[w1].settings.api_key"


@pytest.mark.parametrize(
    "case",
    [
        "to_another_user",
        "to_another_layout",
        "to_another_field",
        "to_another_widget",
        "nonce",
        "ciphertext",
        "tag",
    ],
)
def test_moved_or_altered_stored_ciphertext_fails_to_load_and_nothing_is_re_saved(
    durable_storage: Storage, tmp_path: Path, case: str
) -> None:
    writer = manager(durable_storage, tmp_path)
    for user_id, layout_id, first in (
        ("alice", "default", "a"),
        ("alice", "sales", "s"),
        ("bob", "default", "b"),
    ):
        writer.save_layout(
            user_id,
            layout(secret(first), secret(f"{first}2"), token=secret(f"{first}t")),
            layout_id=layout_id,
            immediate=True,
        )
    raw = RawStore(durable_storage, tmp_path)
    key, path = tampered(raw, case)
    stored_before = raw.document(key)
    reader = manager(durable_storage, tmp_path, outbox="outbox-reader", device_id="reader")

    with pytest.raises(DecryptionError) as caught:
        reader.load_layout(key.user_id, layout_id=key.layout_id)

    error = caught.value
    assert (error.user_id, error.layout_id, error.path) == (key.user_id, key.layout_id, path)
    assert error.reason == "authentication_failed"
    assert all(part in str(error) for part in (key.user_id, key.layout_id, path))
    assert MARKER.decode() not in str(error)
    assert raw.document(key) == stored_before
    stored = durable_storage.read(key)
    assert stored is not None and stored.version == 1
