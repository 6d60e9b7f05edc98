"""The manager's activity log, widget data cache and cross-process events, on every backend."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime

import pytest

from dashpersist import Layout, PersistenceConfig, PersistenceManager, Widget
from dashpersist.events import ChangeEvent
from dashpersist.storage import Storage
from tests.children import REPO_ROOT

DIRECT = PersistenceConfig(auto_save=False)


def board(title: str) -> Layout:
    return Layout(widgets=[Widget(id="w1", type="chart", title=title, w=4, h=2)])


def test_every_write_rollback_merge_and_delete_is_in_the_activity_log(storage: Storage) -> None:
    laptop = PersistenceManager(storage, config=DIRECT, device_id="laptop")
    phone = PersistenceManager(storage, config=DIRECT, device_id="phone")
    laptop.save_layout("alice", board("one"))
    phone.load_layout("alice")
    laptop.save_layout("alice", board("two"))
    phone.save_layout("alice", board("one").with_changes(theme="dark"))
    laptop.rollback_to_version("alice", 1)
    laptop.delete_layout("alice")
    laptop.save_layout("bob", board("bob's"))

    first = laptop.get_activity("alice", limit=3)
    rest = laptop.get_activity("alice", limit=10, before=first.next_cursor)

    actions = [(e.action, e.version, e.device_id) for e in [*first.entries, *rest.entries]]
    assert actions == [
        ("deleted", None, "laptop"),
        ("rolled_back", 4, "laptop"),
        ("merged", 3, "phone"),
        ("saved", 2, "laptop"),
        ("saved", 1, "laptop"),
    ]
    assert rest.next_cursor is None
    assert [e.user_id for e in laptop.get_activity("bob").entries] == ["bob"]


def test_widget_data_is_cached_per_user_in_the_same_store(storage: Storage) -> None:
    pm = PersistenceManager(storage, config=DIRECT)

    pm.widget_cache.put("alice", "w1", {"rows": [1, 2, 3]}, ttl=60)
    pm.widget_cache.put("bob", "w1", {"rows": []}, ttl=60)

    assert pm.widget_cache.get("alice", "w1") == {"rows": [1, 2, 3]}
    assert pm.widget_cache.get_many("bob", ["w1", "w2"]) == {"w1": {"rows": []}}


CHILD_WRITE = """
import sys
from dashpersist import Layout, PersistenceConfig, PersistenceManager, Widget
with PersistenceManager(sys.argv[1], device_id="other-process",
                        config=PersistenceConfig(auto_save=False)) as pm:
    pm.load_layout("alice")
    widget = Widget(id="w1", type="chart", title="from the child", w=4, h=2)
    pm.save_layout("alice", Layout(widgets=[widget]))
"""


@pytest.mark.postgres
def test_a_write_in_another_process_reaches_subscribers_and_clears_the_cache(
    postgres_url: str,
) -> None:
    heard = threading.Event()
    events: list[ChangeEvent] = []

    def listen(event: ChangeEvent) -> None:
        events.append(event)
        if event.device_id == "other-process":
            heard.set()

    with PersistenceManager(postgres_url, config=DIRECT) as pm:
        pm.save_layout("alice", board("first"))
        assert pm.load_layout("alice") == board("first")  # now cached (TTL 300 s)
        assert pm._listener is not None and pm._listener.wait_until_listening(5)
        pm.subscribe(listen)

        child = subprocess.run(
            [sys.executable, "-c", CHILD_WRITE, postgres_url],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert child.returncode == 0, child.stderr

        assert heard.wait(1.0)
        seen = pm.load_layout("alice")

    assert seen is not None
    assert seen.widget("w1").title == "from the child"
    assert [(e.kind, e.version) for e in events if e.device_id == "other-process"] == [("saved", 2)]


def test_the_manager_purges_expired_widget_data_in_the_background(storage: Storage) -> None:
    config = PersistenceConfig(auto_save=False, widget_cache_purge_interval=0.05)
    pm = PersistenceManager(storage, config=config)
    long_ago = datetime(2000, 1, 1, tzinfo=UTC)  # an entry "still valid then" is still stored
    pm.widget_cache.put("alice", "w1", {"rows": []}, ttl=0.01)
    assert pm.widget_cache.store.get_many("alice", ["w1"], now=long_ago) != {}
    gone = threading.Event()

    for _ in range(200):  # bounded: at most ~4 s
        if pm.widget_cache.store.get_many("alice", ["w1"], now=long_ago) == {}:
            gone.set()
            break
        gone.wait(0.02)
    running = pm.widget_cache.is_purging
    pm.close()

    assert running
    assert gone.is_set()
