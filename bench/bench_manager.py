"""The manager's caller-side costs: a queued save and an optimistic apply on 50 widgets,
and a queued save of a document whose `apply` change waits (the save settles it).

Both validate on the caller's thread (so an invalid layout is refused at once) and do no
I/O there; the baseline is the autosave queue's bare put() measured in the same run.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._timing import format_table, layout_document, median_seconds
from dashpersist import Layout, MemoryStorage, PersistenceConfig, PersistenceManager
from dashpersist.autosave import AutosaveQueue


def _measure(widgets: int, config: PersistenceConfig) -> list[dict[str, object]]:
    documents = [layout_document(widgets, revision) for revision in range(32)]
    models = [Layout.model_validate(d) for d in documents]
    pm = PersistenceManager(MemoryStorage(), config=config, start_threads=False)
    # Each kind of call on its own document: the saves' ("u"), the applies' ("v"), and
    # one whose apply change waits, which every save there supersedes ("w").
    for user in ("u", "v", "w"):
        pm.save_layout(user, models[0], immediate=True)
    pm.apply("w", lambda layout: layout.update_widget("w1", h=4))
    queue: AutosaveQueue[str, object, None] = AutosaveQueue(
        lambda key, value: None, delay=3600, max_wait=7200, start_worker=False
    )
    turns = itertools.cycle(range(32))
    times = median_seconds(
        {
            "put": lambda: queue.put("u", documents[next(turns)]),
            "save_model": lambda: pm.save_layout("u", models[next(turns)]),
            "save_dict": lambda: pm.save_layout("u", documents[next(turns)]),
            "apply": lambda: pm.apply(
                "v", lambda layout: layout.update_widget("w1", h=1 + next(turns) % 3)
            ),
            "save_model_over_change": lambda: pm.save_layout("w", models[next(turns)]),
        },
        batches=7,
        per_batch=50,
    )
    pm.close()
    return [
        {
            "case": name,
            "widgets": widgets,
            "us_per_call": times[name] * 1e6,
            "bare_put_us": times["put"] * 1e6,
            "to_bare_put": times[name] / times["put"],
            "budget_us": 100 if name == "apply" else 50,
        }
        for name in ("save_model", "save_dict", "apply", "save_model_over_change")
    ]


COLUMNS = ["case", "widgets", "us_per_call", "bare_put_us", "to_bare_put", "budget_us"]


def run() -> list[dict[str, object]]:
    """Return µs per call for queued saves (model and dict input), apply, and the bare put."""
    with tempfile.TemporaryDirectory() as folder:
        config = PersistenceConfig(
            auto_save_delay=3600, auto_save_max_wait=7200, outbox_dir=Path(folder) / "outbox"
        )
        return [row for widgets in (10, 50) for row in _measure(widgets, config)]


if __name__ == "__main__":
    print(format_table(run(), COLUMNS))
