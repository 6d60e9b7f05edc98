"""Programs the multi-process and crash tests run in fresh interpreters.

Run as ``python -m tests.children MODE URL ...`` from the repository root. Each child
prints one line per acknowledged operation, flushed at once, so a parent that kills it
knows exactly what was acknowledged before the kill.
"""

from __future__ import annotations

import os
import sys

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


def main(argv: list[str]) -> None:
    mode, url, *rest = argv
    if mode == "append":
        append_tokens(url, rest[0], int(rest[1]))
    elif mode == "edit-own-widget":
        edit_own_widget(url, rest[0], int(rest[1]))
    elif mode == "save-forever":
        save_forever(url, int(rest[0]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
