"""Key rotation on every backend (S16): after rotating and dropping the old key, every
version of every document still reads, and no stored ciphertext names the old key."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, cast

import orjson

from dashpersist import PersistenceConfig, PersistenceManager
from dashpersist._canonical import canonical_json
from dashpersist.encryption import FieldEncryptor, KeyRing
from dashpersist.errors import DecryptionError
from dashpersist.rotation import RotationProgress, rotate_document, rotate_store
from dashpersist.storage import DocumentKey, Storage, StoredDocument, VersionRecord
from dashpersist.testing import FaultyStorage
from dashpersist.types import JsonObject, JsonValue

K0, K1, K2 = bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96))
FIELDS = ("widgets[*].settings.api_key",)
KEYFRAME_INTERVAL = 4
ENVELOPE_KEY_ID = re.compile(rb"dp:v1:([A-Za-z0-9_-]+):")


def manager(storage: Storage, keyring: KeyRing, **config: Any) -> PersistenceManager:
    return PersistenceManager(
        storage,
        config=PersistenceConfig(
            enable_encryption=True,
            auto_save=False,
            keyframe_interval=KEYFRAME_INTERVAL,
            **config,
        ),
        keyring=keyring,
        device_id="laptop",
    )


def encryptor(keys: dict[str, bytes]) -> FieldEncryptor:
    return FieldEncryptor(KeyRing(keys), FIELDS)


def secret_a(version: int) -> str:
    """The first widget's secret: it changes at versions 4 and 8 only."""
    return f"sk-a-{(version >= 4) + (version >= 8)}-plaintext"


def document(version: int, *, owner: str = "alice") -> JsonObject:
    return {
        "widgets": [
            {
                "id": "w1",
                "type": "chart",
                "title": f"{owner} v{version}",
                "settings": {"api_key": secret_a(version)},
            },
            {"id": "w2", "type": "chart", "settings": {"api_key": f"sk-b-{owner}-plaintext"}},
            {"id": "w3", "type": "text", "settings": {"color": "red"}},
        ]
    }


def save_versions(pm: PersistenceManager, key: DocumentKey, count: int) -> None:
    for version in range(1, count + 1):
        result = pm.save_layout(
            key.user_id,
            document(version, owner=key.user_id),
            layout_id=key.layout_id,
            immediate=True,
            description=f"step {version}",
            label="milestone" if version == 3 else None,
        )
        assert result.version == version


def stored_bytes(storage: Storage, key: DocumentKey) -> list[bytes]:
    """Return the canonical bytes of the stored document and of every history record."""
    current = storage.read(key)
    assert current is not None
    records = storage.versions(key, limit=10_000)
    return [
        canonical_json(current.document),
        *(canonical_json(cast(JsonValue, r.patch)) for r in records),
        *(canonical_json(cast(JsonValue, r.snapshot)) for r in records),
    ]


def key_ids_in(storage: Storage, keys: list[DocumentKey]) -> set[bytes]:
    return {
        match
        for key in keys
        for data in stored_bytes(storage, key)
        for match in ENVELOPE_KEY_ID.findall(data)
    }


def metadata(records: list[VersionRecord]) -> list[tuple[object, ...]]:
    return [
        (
            r.version,
            r.created_at,
            r.change_type,
            r.description,
            r.device_id,
            r.label,
            r.schema_version,
            r.idempotency_key,
            r.snapshot is not None,
        )
        for r in records
    ]


def api_keys(pm: PersistenceManager, key: DocumentKey, version: int) -> list[object]:
    layout = pm.get_version(key.user_id, version, layout_id=key.layout_id)
    return [widget.settings.get("api_key") for widget in layout.widgets]


# -- rotating and dropping the old key ---------------------------------------------------


def test_after_rotation_every_version_reads_with_the_new_key_only(storage: Storage) -> None:
    keys = [DocumentKey("alice"), DocumentKey("alice", "sales"), DocumentKey("bob")]
    old = manager(storage, KeyRing({"k1": K1}))
    for key in keys:
        save_versions(old, key, 10)
    before = {key: metadata(storage.versions(key, limit=100)) for key in keys}
    seen: list[RotationProgress] = []

    report = rotate_store(
        storage,
        encryptor({"k1": K1, "k2": K2}),
        keyframe_interval=KEYFRAME_INTERVAL,
        progress=seen.append,
    )

    new = manager(storage, KeyRing({"k2": K2}))
    assert report.ok and report.documents_rotated == 3
    assert [(p.documents_done, p.documents_total, p.primary_key_id) for p in seen] == [
        (1, 3, "k2"),
        (2, 3, "k2"),
        (3, 3, "k2"),
    ]
    assert sorted(p.key for p in seen) == sorted(keys)
    assert key_ids_in(storage, keys) == {b"k2"}
    for key in keys:
        for version in range(1, 11):
            assert api_keys(new, key, version) == [
                secret_a(version),
                f"sk-b-{key.user_id}-plaintext",
                None,
            ]
        assert new.verify(key.user_id, layout_id=key.layout_id).ok
        assert metadata(storage.versions(key, limit=100)) == before[key]


def test_rotation_keeps_an_unchanged_secret_out_of_the_patches(storage: Storage) -> None:
    key = DocumentKey("alice")
    save_versions(manager(storage, KeyRing({"k1": K1})), key, 10)

    rotate_document(storage, key, encryptor({"k1": K1, "k2": K2}), keyframe_interval=4)

    patches = {
        r.version: canonical_json(cast(JsonValue, r.patch))
        for r in storage.versions(key, limit=100)
    }
    changed_secret = {4, 8}
    assert all(b"dp:v1:" in patches[v] for v in changed_secret)
    assert not any(b"dp:v1:" in patches[v] for v in range(2, 11) if v not in changed_secret)


def test_new_saves_after_rotation_use_the_new_key(storage: Storage) -> None:
    key = DocumentKey("alice")
    save_versions(manager(storage, KeyRing({"k1": K1})), key, 3)
    rotate_store(storage, encryptor({"k1": K1, "k2": K2}), keyframe_interval=KEYFRAME_INTERVAL)
    new = manager(storage, KeyRing({"k2": K2}))

    new.save_layout("alice", document(9), immediate=True)

    assert key_ids_in(storage, [key]) == {b"k2"}
    assert api_keys(new, key, 4)[0] == secret_a(9)
    assert new.verify("alice").ok


def test_a_second_rotation_finds_nothing_to_do_and_writes_nothing(storage: Storage) -> None:
    key = DocumentKey("alice")
    save_versions(manager(storage, KeyRing({"k1": K1})), key, 5)
    ring = encryptor({"k1": K1, "k2": K2})
    rotate_store(storage, ring, keyframe_interval=KEYFRAME_INTERVAL)
    after_first = (storage.read(key), storage.versions(key, limit=100))

    report = rotate_store(storage, ring, keyframe_interval=KEYFRAME_INTERVAL)

    assert report.ok and report.documents_rotated == 0
    assert [o.rotated for o in report.outcomes] == [False]
    assert (storage.read(key), storage.versions(key, limit=100)) == after_first


def test_a_history_trimmed_by_retention_rotates_and_stays_readable(storage: Storage) -> None:
    key = DocumentKey("alice")
    old = manager(storage, KeyRing({"k1": K1}))
    save_versions(old, key, 10)
    old.cleanup_old_versions("alice", keep=4)
    assert [r.version for r in storage.versions(key, limit=100)] == [10, 9, 8, 7, 3]

    outcome = rotate_document(
        storage, key, encryptor({"k1": K1, "k2": K2}), keyframe_interval=KEYFRAME_INTERVAL
    )

    new = manager(storage, KeyRing({"k2": K2}))
    assert outcome.rotated and outcome.versions == 5
    assert key_ids_in(storage, [key]) == {b"k2"}
    assert [api_keys(new, key, v)[0] for v in (3, 7, 8, 9, 10)] == [
        secret_a(v) for v in (3, 7, 8, 9, 10)
    ]
    assert new.verify("alice").ok


# -- failures ------------------------------------------------------------------------------


def test_a_document_whose_key_is_missing_is_reported_and_the_others_still_rotate(
    storage: Storage,
) -> None:
    alice, bob = DocumentKey("alice"), DocumentKey("bob")
    save_versions(manager(storage, KeyRing({"k1": K1})), alice, 3)
    save_versions(manager(storage, KeyRing({"k0": K0})), bob, 3)
    bob_before = (storage.read(bob), storage.versions(bob, limit=100))

    report = rotate_store(
        storage, encryptor({"k1": K1, "k2": K2}), keyframe_interval=KEYFRAME_INTERVAL
    )

    assert not report.ok
    assert [o.key for o in report.outcomes if o.rotated] == [alice]
    (failure,) = report.failures
    assert failure.key == bob
    assert isinstance(failure.error, DecryptionError)
    assert failure.error.reason == "missing_key" and failure.error.key_id == "k0"
    assert "'k0'" in str(failure.error)
    assert (storage.read(bob), storage.versions(bob, limit=100)) == bob_before
    assert key_ids_in(storage, [alice]) == {b"k2"}
    assert api_keys(manager(storage, KeyRing({"k0": K0})), bob, 2)[0] == secret_a(2)


# -- racing writers ------------------------------------------------------------------------


class WriterGetsIn(FaultyStorage):
    """A real store where *writer* runs once, just before the first `replace_document`."""

    def __init__(self, inner: Storage, writer: Callable[[], None]) -> None:
        super().__init__(inner)
        self.writer: Callable[[], None] | None = writer

    def replace_document(
        self,
        key: DocumentKey,
        current: StoredDocument,
        history: list[VersionRecord],
        *,
        expected_version: int,
    ) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer()
        super().replace_document(key, current, history, expected_version=expected_version)


def test_a_writer_getting_in_makes_the_rotation_retry_and_its_version_is_rotated_too(
    storage: Storage,
) -> None:
    key = DocumentKey("alice")
    old = manager(storage, KeyRing({"k1": K1}))
    save_versions(old, key, 5)

    def writer() -> None:
        assert old.save_layout("alice", document(8), immediate=True).version == 6

    racing = WriterGetsIn(storage, writer)

    outcome = rotate_document(
        racing, key, encryptor({"k1": K1, "k2": K2}), keyframe_interval=KEYFRAME_INTERVAL
    )

    new = manager(storage, KeyRing({"k2": K2}))
    assert (outcome.rotated, outcome.attempts, outcome.versions) == (True, 2, 6)
    assert racing.calls["replace_document"] == 2
    assert key_ids_in(storage, [key]) == {b"k2"}
    assert api_keys(new, key, 6)[0] == secret_a(8)
    assert new.verify("alice").ok


def test_a_writer_that_read_before_the_rotation_re_reads_and_saves_on_top_of_it(
    storage: Storage,
) -> None:
    key = DocumentKey("alice")
    save_versions(manager(storage, KeyRing({"k1": K1})), key, 3)
    ring = KeyRing({"k1": K1, "k2": K2})
    writer = manager(storage, ring)
    writer.load_layout("alice")  # cached: the pre-rotation content
    rotate_store(storage, FieldEncryptor(ring, FIELDS), keyframe_interval=KEYFRAME_INTERVAL)

    result = writer.save_layout("alice", document(4), immediate=True)

    new = manager(storage, KeyRing({"k2": K2}))
    assert result.success and result.version == 4
    assert key_ids_in(storage, [key]) == {b"k2"}
    assert [api_keys(new, key, v)[0] for v in (3, 4)] == [secret_a(3), secret_a(4)]
    assert new.verify("alice").ok


def test_the_rotated_store_holds_no_plaintext_secret(storage: Storage) -> None:
    key = DocumentKey("alice")
    save_versions(manager(storage, KeyRing({"k1": K1})), key, 6)

    rotate_document(
        storage, key, encryptor({"k1": K1, "k2": K2}), keyframe_interval=KEYFRAME_INTERVAL
    )

    everything = b"".join(stored_bytes(storage, key))
    assert b"plaintext" not in everything
    assert orjson.loads(stored_bytes(storage, key)[0])["widgets"][2]["settings"] == {"color": "red"}
