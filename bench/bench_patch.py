"""Benchmark `dashpersist.patch.make_patch` against `jsonpatch.make_patch` in the same run.

Usage: ``python bench/bench_patch.py``. Prints one row per case and layout size: the
median time of each (runs interleaved, so machine load hits both alike), the speed ratio,
and the size of each patch in bytes of compact JSON.
"""

from __future__ import annotations

import functools
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import jsonpatch
import orjson

from dashpersist._canonical import copy_json
from dashpersist.patch import apply_patch, make_patch
from dashpersist.types import JsonObject

SIZES = (50, 500)
REPEATS = 15
"""Timed rounds per case; each round times both libraries, alternating which goes first."""
MIN_BATCH_SECONDS = 0.005
"""A timed batch repeats the call until it takes at least this long."""


def make_widget(index: int, rng: random.Random) -> JsonObject:
    """Return one widget shaped like a real dashboard's."""
    return {
        "id": f"widget-{index:04d}",
        "type": rng.choice(["chart", "table", "metric", "text"]),
        "title": f"Widget {index}: {rng.choice(['Revenue', 'Users', 'Latency', 'Errors'])}",
        "x": (index * 4) % 12,
        "y": index // 3,
        "w": rng.randint(2, 6),
        "h": rng.randint(2, 5),
        "settings": {
            "metric": rng.choice(["sum", "mean", "p95"]),
            "color": f"#{rng.randrange(1 << 24):06x}",
            "limit": rng.randint(10, 1000),
            "stacked": rng.random() < 0.5,
            "opacity": round(rng.random(), 2),
        },
    }


def make_layout(widget_count: int, seed: int = 7) -> JsonObject:
    """Return a layout with *widget_count* widgets plus dashboard state."""
    rng = random.Random(seed)
    return {
        "widgets": [make_widget(index, rng) for index in range(widget_count)],
        "theme": "dark",
        "filters": {"region": "emea", "year": 2024},
    }


def _widgets(layout: JsonObject) -> list[Any]:
    widgets = layout["widgets"]
    assert isinstance(widgets, list)
    return widgets


def _moved(layout: JsonObject) -> JsonObject:
    after = copy_json(layout)
    widget = _widgets(after)[len(_widgets(after)) // 2]
    widget["x"] += 1
    widget["y"] += 2
    return after


def _inserted_at_front(layout: JsonObject) -> JsonObject:
    after = copy_json(layout)
    _widgets(after).insert(0, make_widget(9999, random.Random(1)))
    return after


def _removed(layout: JsonObject) -> JsonObject:
    after = copy_json(layout)
    del _widgets(after)[len(_widgets(after)) // 3]
    return after


def _retitled(layout: JsonObject) -> JsonObject:
    after = copy_json(layout)
    _widgets(after)[len(_widgets(after)) // 2]["title"] = "Renamed widget"
    return after


def _tenth_changed(layout: JsonObject) -> JsonObject:
    after = copy_json(layout)
    for index, widget in enumerate(_widgets(after)):
        if index % 10 == 3:
            widget["title"] += " (edited)"
            widget["settings"]["limit"] += 1
    return after


CASES: dict[str, Callable[[JsonObject], JsonObject]] = {
    "one widget moved": _moved,
    "one inserted at front": _inserted_at_front,
    "one removed": _removed,
    "one retitled": _retitled,
    "10% of widgets changed": _tenth_changed,
}


def _batch_seconds(call: Callable[[], object], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        call()
    return (time.perf_counter() - start) / repeat


def _calibrate(call: Callable[[], object]) -> int:
    repeat = 1
    while _batch_seconds(call, repeat) * repeat < MIN_BATCH_SECONDS:
        repeat *= 2
    return repeat


def _measure(ours: Callable[[], object], theirs: Callable[[], object]) -> tuple[float, float]:
    """Return the median seconds per call of *ours* and *theirs*, timed interleaved."""
    ours_repeat, theirs_repeat = _calibrate(ours), _calibrate(theirs)
    ours_times: list[float] = []
    theirs_times: list[float] = []
    for round_index in range(REPEATS):
        if round_index % 2:
            theirs_times.append(_batch_seconds(theirs, theirs_repeat))
            ours_times.append(_batch_seconds(ours, ours_repeat))
        else:
            ours_times.append(_batch_seconds(ours, ours_repeat))
            theirs_times.append(_batch_seconds(theirs, theirs_repeat))
    return statistics.median(ours_times), statistics.median(theirs_times)


def run() -> list[dict[str, Any]]:
    """Measure every case at every size; return one row per case and size."""
    rows: list[dict[str, Any]] = []
    for widget_count in SIZES:
        before = make_layout(widget_count)
        for case, edit in CASES.items():
            after = edit(before)
            ours_patch = make_patch(before, after)
            theirs_patch = jsonpatch.make_patch(before, after).patch
            # A benchmark of a wrong answer is worthless: check before timing.
            assert apply_patch(before, ours_patch) == after, case
            ours_seconds, theirs_seconds = _measure(
                functools.partial(make_patch, before, after),
                functools.partial(jsonpatch.make_patch, before, after),
            )
            ours_bytes = len(orjson.dumps(ours_patch))
            theirs_bytes = len(orjson.dumps(theirs_patch))
            rows.append(
                {
                    "case": case,
                    "widgets": widget_count,
                    "ours_us": ours_seconds * 1e6,
                    "jsonpatch_us": theirs_seconds * 1e6,
                    "speed_ratio": theirs_seconds / ours_seconds,
                    "ours_ops": len(ours_patch),
                    "jsonpatch_ops": len(theirs_patch),
                    "ours_bytes": ours_bytes,
                    "jsonpatch_bytes": theirs_bytes,
                    "size_ratio": theirs_bytes / ours_bytes,
                }
            )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print *rows* as an aligned table."""
    header = (
        f"{'case':<24} {'widgets':>7} {'ours µs':>9} {'jsonpatch µs':>12} {'speed':>7} "
        f"{'ours B':>7} {'jsonpatch B':>11} {'size':>6} {'ops':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['case']:<24} {row['widgets']:>7} {row['ours_us']:>9.1f} "
            f"{row['jsonpatch_us']:>12.1f} {row['speed_ratio']:>6.1f}x "
            f"{row['ours_bytes']:>7} {row['jsonpatch_bytes']:>11} {row['size_ratio']:>5.2f}x "
            f"{row['ours_ops']:>4}/{row['jsonpatch_ops']:<4}"
        )
    print(
        "speed and size: jsonpatch / ours (higher is better for dashpersist); ops: ours/jsonpatch"
    )


if __name__ == "__main__":
    print_table(run())
