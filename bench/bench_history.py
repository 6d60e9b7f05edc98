"""History storage: bytes of 1,000 delta versions vs 1,000 full snapshots, and rebuild time.

1,000 versions of a 50-widget layout, one field changed each, stored by dashpersist
(patches plus a keyframe every 32 versions) against the same 1,000 versions stored as
whole snapshots (keyframe_interval=1), in the same run: SQLite file size after a WAL
checkpoint and VACUUM, and the JSON folder's bytes. Then the time to rebuild an
arbitrary old version.
"""

from __future__ import annotations

import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._timing import format_table, layout_document
from dashpersist import DocumentKey, PersistenceConfig, PersistenceManager
from dashpersist.storage.jsonfile import JSONFileStorage
from dashpersist.storage.sql import SQLStorage

VERSIONS = 1000


def _fill(pm: PersistenceManager) -> None:
    document = layout_document(50, 0)
    for revision in range(VERSIONS):
        widget = document["widgets"][revision % 50]  # type: ignore[index]
        widget["settings"]["limit"] = revision  # type: ignore[index]
        pm.save_layout("u", document, immediate=True)  # type: ignore[arg-type]


def _config(keyframe_interval: int) -> PersistenceConfig:
    return PersistenceConfig(
        keyframe_interval=keyframe_interval, max_versions=VERSIONS + 10, auto_save=False
    )


def _sqlite_bytes(path: Path) -> int:
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("VACUUM")
    db.close()
    return path.stat().st_size


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _rebuild_ms(pm: PersistenceManager) -> float:
    rng = random.Random(7)
    samples = []
    for _ in range(50):
        version = rng.randint(1, VERSIONS)
        start = time.perf_counter()
        pm.get_version("u", version)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def run() -> list[dict[str, object]]:
    """Return rows: backend, delta bytes, snapshot bytes, ratio, rebuild ms."""
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="dashpersist-history-") as folder:
        root = Path(folder)
        sizes: dict[str, dict[int, int]] = {"sqlite": {}, "jsonfile": {}}
        rebuild: dict[str, float] = {}
        for interval in (32, 1):
            db = root / f"history-{interval}.db"
            with PersistenceManager(SQLStorage(f"sqlite:///{db}"), config=_config(interval)) as pm:
                _fill(pm)
                if interval == 32:
                    rebuild["sqlite"] = _rebuild_ms(pm)
                pm.storage.close()
            sizes["sqlite"][interval] = _sqlite_bytes(db)
            json_root = root / f"json-{interval}"
            with PersistenceManager(JSONFileStorage(json_root), config=_config(interval)) as pm:
                _fill(pm)
                if interval == 32:
                    rebuild["jsonfile"] = _rebuild_ms(pm)
                assert pm.storage.read(DocumentKey("u")) is not None
                pm.storage.close()
            sizes["jsonfile"][interval] = _folder_bytes(json_root)
        for backend, by_interval in sizes.items():
            rows.append(
                {
                    "backend": backend,
                    "versions": VERSIONS,
                    "delta_bytes": by_interval[32],
                    "snapshot_bytes": by_interval[1],
                    "delta_to_snapshot": by_interval[32] / by_interval[1],
                    "rebuild_ms": rebuild[backend],
                }
            )
    return rows


COLUMNS = [
    "backend",
    "versions",
    "delta_bytes",
    "snapshot_bytes",
    "delta_to_snapshot",
    "rebuild_ms",
]

if __name__ == "__main__":
    print(format_table(run(), COLUMNS))
