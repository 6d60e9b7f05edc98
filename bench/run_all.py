"""Run every benchmark and write bench/RESULTS.md: each figure beside its same-run baseline."""

from __future__ import annotations

import importlib
import os
import platform
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._timing import format_table

BENCHES = [
    (
        "bench.bench_storage",
        "Storage and manager: save and load vs raw sqlite3 / psycopg / file write",
    ),
    ("bench.bench_tinydb", "JSON folder vs TinyDB (1,000 users in one file)"),
    ("bench.bench_history", "History: delta storage vs full snapshots, and rebuilding a version"),
    ("bench.bench_patch", "Diff engine: make_patch vs jsonpatch.make_patch"),
    ("bench.bench_merge", "Three-way merge vs one make_patch of the same layouts"),
    ("bench.bench_validation", "Validation cost on the save path"),
    ("bench.bench_encryption", "Field encryption cost"),
    ("bench.bench_encryption_save", "A save with 5 encrypted fields vs without"),
    ("bench.bench_autosave", "Autosave: call overhead and write reduction"),
    (
        "bench.bench_manager",
        "Manager: a queued save and an optimistic apply on the caller's thread",
    ),
]


def machine() -> str:
    """Describe the machine the figures come from."""
    return (
        f"{platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}"
    )


def main() -> None:
    sections = [
        "# Benchmark results",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}.",
        "Every ratio compares against a baseline measured in the same run; absolute times",
        "move between runs and machines, ratios much less. Regenerate with `make bench`.",
    ]
    for module_name, title in BENCHES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            sections += ["", f"## {title}", "", f"(not run: {exc})"]
            continue
        print(f"running {module_name} ...", flush=True)
        started = time.perf_counter()
        rows = module.run()
        elapsed = time.perf_counter() - started
        columns = list(dict.fromkeys(column for row in rows for column in row))
        sections += ["", f"## {title}", "", f"`{module_name}` ({elapsed:.0f} s)", ""]
        sections.append(format_table(rows, columns) if rows else "(no rows)")
    output = Path(__file__).with_name("RESULTS.md")
    output.write_text("\n".join(sections) + "\n", encoding="utf-8")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
