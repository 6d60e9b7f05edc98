"""rotate_keys through the manager, including an outbox entry parked before the rotation."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashpersist import (
    ConfigurationError,
    KeyRing,
    Layout,
    MemoryStorage,
    PersistenceConfig,
    PersistenceManager,
    Widget,
)
from dashpersist.rotation import RotationProgress
from dashpersist.storage import DocumentKey
from dashpersist.testing import FakeClock, FaultyStorage

K1, K2 = KeyRing.generate_key(), KeyRing.generate_key()


def board(secret: str, title: str = "") -> Layout:
    return Layout(
        widgets=[Widget(id="w1", type="chart", title=title, w=4, h=2, settings={"api_key": secret})]
    )


def manager(storage: FaultyStorage, keyring: KeyRing, tmp_path: Path) -> PersistenceManager:
    clock = FakeClock()
    config = PersistenceConfig(
        enable_encryption=True, auto_save=False, retry_attempts=1, outbox_dir=tmp_path / "outbox"
    )
    return PersistenceManager(
        storage, config=config, keyring=keyring, timer=clock, sleep=clock.sleep, start_threads=False
    )


def stored_text(storage: MemoryStorage, user: str) -> str:
    key = DocumentKey(user)
    return str(storage.read(key)) + str(storage.versions(key, limit=100))


def test_rotate_keys_rewrites_history_so_the_old_key_can_go(tmp_path: Path) -> None:
    inner = MemoryStorage()
    storage = FaultyStorage(inner)
    old = manager(storage, KeyRing({"k1": K1}), tmp_path)
    for index, secret in enumerate(["s-one", "s-one", "s-two", "s-two"]):
        old.save_layout("alice", board(secret, title=f"v{index}"))
    old.close()
    both = manager(storage, KeyRing({"k1": K1, "k2": K2}), tmp_path)
    steps: list[RotationProgress] = []

    report = both.rotate_keys(progress=steps.append)
    both.close()
    new_only = manager(storage, KeyRing({"k2": K2}), tmp_path)

    assert report.ok
    assert [s.documents_done for s in steps] == [1]
    assert ":k1:" not in stored_text(inner, "alice")
    assert [
        new_only.get_version("alice", v).widget("w1").settings["api_key"] for v in range(1, 5)
    ] == ["s-one", "s-one", "s-two", "s-two"]
    assert new_only.verify("alice").ok
    assert new_only.get_activity("alice").entries[0].action == "keys_rotated"


def test_an_entry_parked_before_a_rotation_replays_under_the_new_key(tmp_path: Path) -> None:
    inner = MemoryStorage()
    storage = FaultyStorage(inner)
    offline = manager(storage, KeyRing({"k1": K1}), tmp_path / "offline-device")
    offline.save_layout("alice", board("s-one"))
    storage.go_offline()
    offline.save_layout("alice", board("s-offline", title="parked"))
    storage.go_online()
    rotator = manager(storage, KeyRing({"k1": K1, "k2": K2}), tmp_path / "rotator")
    assert rotator.rotate_keys().ok

    # The offline device now knows both keys, k2 primary, and comes back online.
    offline.close()
    returning = manager(storage, KeyRing({"k1": K1, "k2": K2}), tmp_path / "offline-device")
    synced = returning.sync("alice")
    new_only = manager(storage, KeyRing({"k2": K2}), tmp_path / "reader")

    loaded = new_only.load_layout("alice")
    assert synced.replayed == 1
    assert ":k1:" not in stored_text(inner, "alice")
    assert loaded is not None
    assert loaded.widget("w1").settings["api_key"] == "s-offline"


def test_rotate_keys_needs_encryption(tmp_path: Path) -> None:
    pm = PersistenceManager(MemoryStorage(), config=PersistenceConfig(auto_save=False))

    with pytest.raises(ConfigurationError):
        pm.rotate_keys()
