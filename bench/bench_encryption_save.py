"""Benchmark a whole 50-widget save with 5 encrypted fields against the same save without
encryption, on SQLite, in the same run (issue 6: encryption adds at most 15%).

Usage: ``python bench/bench_encryption_save.py``. Each save is
``save_layout(immediate=True)`` of a new revision (one widget retitled), so every call
writes a version. Two cases: the secrets are unchanged (the common save: their previous
ciphertext is kept) and every secret changes on every save (all 5 encrypted afresh).
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._timing import format_table, layout_document, median_seconds
from dashpersist import PersistenceConfig, PersistenceManager
from dashpersist.encryption import KeyRing
from dashpersist.storage.sql import SQLStorage
from dashpersist.types import JsonObject

WIDGETS = 50
SECRETS = 5
TARGET_RATIO = 1.15
REVISIONS = 500
"""Distinct documents saved in turn; more than the calls one variant makes."""
COLUMNS = ["widgets", "encrypted fields", "secrets", "plain µs", "encrypted µs", "ratio", "target"]


def documents(*, change_secrets: bool) -> Iterator[JsonObject]:
    """Yield revisions of a 50-widget layout whose first `SECRETS` widgets hold an API key."""
    built = []
    for revision in range(REVISIONS):
        doc = cast(dict[str, Any], layout_document(WIDGETS, revision))
        for index, widget in enumerate(doc["widgets"][:SECRETS]):
            suffix = revision if change_secrets else 0
            widget["settings"]["api_key"] = f"sk-live-{index:04d}-{suffix:06d}-" + "x" * 24
        built.append(cast(JsonObject, doc))
    return itertools.cycle(built)


def manager(folder: Path, name: str, *, encrypted: bool) -> PersistenceManager:
    """Return a manager on a fresh SQLite file, with or without field encryption."""
    return PersistenceManager(
        SQLStorage(f"sqlite:///{folder / name}"),
        config=PersistenceConfig(auto_save=False, enable_encryption=encrypted),
        keyring=KeyRing({"k1": KeyRing.generate_key()}) if encrypted else None,
        device_id="bench",
    )


def bench_case(folder: Path, *, change_secrets: bool) -> dict[str, object]:
    """Return the row comparing encrypted and plain saves for one case."""
    plain = manager(folder, f"plain-{change_secrets}.db", encrypted=False)
    sealed = manager(folder, f"sealed-{change_secrets}.db", encrypted=True)
    plain_docs = documents(change_secrets=change_secrets)
    sealed_docs = documents(change_secrets=change_secrets)
    try:
        seconds = median_seconds(
            {
                "plain": lambda: plain.save_layout("alice", next(plain_docs), immediate=True),
                "sealed": lambda: sealed.save_layout("alice", next(sealed_docs), immediate=True),
            },
            batches=21,
            per_batch=10,
        )
    finally:
        for pm in (plain, sealed):
            pm.close()
            pm.storage.close()
    ratio = seconds["sealed"] / seconds["plain"]
    return {
        "widgets": WIDGETS,
        "encrypted fields": SECRETS,
        "secrets": "changed every save" if change_secrets else "unchanged",
        "plain µs": seconds["plain"] * 1e6,
        "encrypted µs": seconds["sealed"] * 1e6,
        "ratio": f"{ratio:.3f}",
        "target": f"<= {TARGET_RATIO}",
    }


def run() -> list[dict[str, object]]:
    """Return one row per case."""
    with tempfile.TemporaryDirectory(prefix="dashpersist-bench-") as folder:
        return [bench_case(Path(folder), change_secrets=change) for change in (False, True)]


if __name__ == "__main__":
    print(format_table(run(), COLUMNS))
