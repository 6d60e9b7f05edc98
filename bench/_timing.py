"""Timing helpers shared by the benchmarks: medians of batches, variants interleaved."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

Operation = Callable[[], object]


def median_seconds(
    variants: dict[str, Operation], *, batches: int = 7, per_batch: int = 20
) -> dict[str, float]:
    """Return each variant's median seconds per call; variants run interleaved batch by batch,
    so drift in machine speed hits them alike."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for operation in variants.values():  # warm-up: imports, caches, statement compilation
        for _ in range(3):
            operation()
    for _ in range(batches):
        for name, operation in variants.items():
            start = time.perf_counter()
            for _ in range(per_batch):
                operation()
            samples[name].append((time.perf_counter() - start) / per_batch)
    return {name: statistics.median(values) for name, values in samples.items()}


def layout_document(widgets: int, revision: int) -> dict[str, object]:
    """Return a layout of *widgets* widgets; each revision changes one widget and the size."""
    return {
        "widgets": [
            {
                "id": f"w{i}",
                "type": "chart",
                "title": f"Widget {i}" + ("!" * (revision % 7) if i == revision % widgets else ""),
                "x": (i * 3) % 12,
                "y": i // 4 * 2,
                "w": 3,
                "h": 2,
                "settings": {
                    "metric": "revenue",
                    "color": "#3366cc",
                    "limit": 100 + i,
                    "series": ["north", "south", "east"],
                    "stacked": i % 2 == 0,
                },
            }
            for i in range(widgets)
        ],
        "theme": "dark",
        "filters": {"year": 2026, "region": "emea"},
        "columns": 12,
        "metadata": {"revision": revision},
    }


def format_table(rows: list[dict[str, object]], columns: list[str]) -> str:
    """Return *rows* as a Markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            cells.append(f"{value:.3g}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
