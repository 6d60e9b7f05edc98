"""Programs the multi-process and crash tests run in fresh interpreters.

Run as ``python -m tests.children MODE URL ...`` from the repository root. Each child
prints one line per acknowledged operation, flushed at once, so a parent that kills it
knows exactly what was acknowledged before the kill.
"""

from __future__ import annotations

import os
import sys
import time

from dashpersist import ConflictError, DocumentKey, PersistenceManager, open_storage
from dashpersist.models import Layout, Widget

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def append_tokens(url: str, name: str, count: int) -> None:
    """Append *count* unique tokens to one shared document, retrying on conflict."""
    storage = open_storage(url)
    key = DocumentKey("shared")
    try:
        for index in range(count):
            token = f"{name}-{index}"
            while True:
                current = storage.read(key)
                tokens = [] if current is None else list(current.document["tokens"])  # type: ignore[arg-type]
                try:
                    storage.write(
                        key,
                        {"tokens": [*tokens, token]},
                        expected_version=None if current is None else current.version,
                    )
                except ConflictError:
                    print("conflict", flush=True)
                    continue
                print(f"ack {token}", flush=True)
                break
    finally:
        storage.close()


def save_forever(url: str, widgets: int) -> None:
    """Save ever newer layouts through the manager, printing each acknowledged version."""
    with PersistenceManager(url, device_id=f"child-{os.getpid()}") as manager:
        version = 0
        while True:
            version += 1
            layout = Layout(
                widgets=[
                    Widget(
                        id=f"w{i}",
                        type="chart",
                        title=f"v{version}",
                        x=0,
                        y=i,
                        w=1,
                        h=1,
                        settings={"padding": "x" * (version % 50)},
                    )
                    for i in range(widgets)
                ],
                metadata={"round": version},
            )
            result = manager.save_layout("crash", layout, immediate=True)
            print(f"ack {result.version} {version}", flush=True)


def edit_own_widget(url: str, name: str, count: int) -> None:
    """Set this process's own widget's counter 1..count in a shared layout, saving each time."""
    with PersistenceManager(url, device_id=name) as manager:
        layout = manager.load_layout("team")
        assert layout is not None
        for index in range(1, count + 1):
            while True:
                widget = layout.widget(name)
                edited = layout.update_widget(name, settings={**widget.settings, "count": index})
                try:
                    result = manager.save_layout("team", edited, immediate=True)
                except ConflictError:
                    # Too far behind to merge (our base left history): reload and redo,
                    # as a user would.
                    print("conflict", flush=True)
                    layout = manager.load_layout("team")
                    assert layout is not None
                    continue
                print(f"ack {result.version} {index}", flush=True)
                break
            layout = manager.load_layout("team")
            assert layout is not None


def _manager(url: str, outbox: str, *, offline: bool = False, delay: float = 60.0):  # type: ignore[no-untyped-def]
    from pathlib import Path

    from dashpersist import PersistenceConfig
    from dashpersist.testing import FaultyStorage

    storage = FaultyStorage(open_storage(url))
    if offline:
        storage.go_offline()
    config = PersistenceConfig(
        outbox_dir=Path(outbox),
        auto_save_delay=delay,
        auto_save_max_wait=max(delay, 10.0),
        retry_attempts=1,
    )
    return storage, PersistenceManager(storage, config=config, device_id=f"child-{os.getpid()}")


def _layout(title: str) -> Layout:
    return Layout(widgets=[Widget(id="w1", type="chart", title=title, w=4, h=2)])


def park_and_hang(url: str, outbox: str) -> None:
    """Save while storage is down (to the outbox), say so, then wait to be killed."""
    _storage, manager = _manager(url, outbox, offline=True)
    result = manager.save_layout("alice", _layout("parked"), immediate=True)
    print(f"ack {result.source}", flush=True)
    time.sleep(600)


def replay(url: str, outbox: str) -> None:
    """Replay the outbox (a fault point may kill this process mid-way), print the result."""
    storage, manager = _manager(url, outbox)
    with manager:
        result = manager.sync("alice")
        print(f"ack {result.replayed} {result.version}", flush=True)
    storage.close()


def queue_and_exit(url: str, outbox: str, how: str) -> None:
    """Queue an edit with a long autosave delay, then end the process *how*."""
    _storage, manager = _manager(url, outbox)
    manager.save_layout("alice", _layout("queued at exit"))
    print("ack queued", flush=True)
    if how == "sys.exit":
        sys.exit(0)


def flush_then_queue(url: str, outbox: str) -> None:
    """S03: queue 50 edits, flush, queue 10 more, then wait to be killed."""
    _storage, manager = _manager(url, outbox)
    for index in range(50):
        manager.save_layout("alice", _layout(f"flushed {index}"))
    manager.flush()
    for index in range(10):
        manager.save_layout("alice", _layout(f"after flush {index}"))
    print("ack flushed", flush=True)
    time.sleep(600)


def main(argv: list[str]) -> None:
    mode, url, *rest = argv
    if mode == "append":
        append_tokens(url, rest[0], int(rest[1]))
    elif mode == "edit-own-widget":
        edit_own_widget(url, rest[0], int(rest[1]))
    elif mode == "park-and-hang":
        park_and_hang(url, rest[0])
    elif mode == "replay":
        replay(url, rest[0])
    elif mode == "queue-and-exit":
        queue_and_exit(url, rest[0], rest[1])
    elif mode == "flush-then-queue":
        flush_then_queue(url, rest[0])
    elif mode == "save-forever":
        save_forever(url, int(rest[0]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
