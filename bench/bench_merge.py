"""Benchmark: a three-way merge against one make_patch of the same layouts, in the same run.

Two edits of one 500-widget layout each change 10% of the widgets (moves, retitles, settings),
a few of them the same widgets, so the merge also meets conflicts. The budget (issue #4) is
merge <= 3x make_patch(base, local).

The baseline is ``dashpersist.patch.make_patch`` when that module exists, else
``jsonpatch.make_patch``; the ``baseline`` column says which was measured.
"""

from __future__ import annotations

import copy
import random
import timeit
from collections.abc import Callable

from dashpersist.merge import ConflictResolver
from dashpersist.types import JsonObject, JsonPatch

WIDGETS = 500
CHANGED_SHARE = 0.10
BUDGET = 3.0


def _baseline() -> tuple[str, Callable[[JsonObject, JsonObject], JsonPatch]]:
    try:
        from dashpersist.patch import make_patch
    except ImportError:
        import jsonpatch

        def jsonpatch_make_patch(before: JsonObject, after: JsonObject) -> JsonPatch:
            return list(jsonpatch.make_patch(before, after))

        return "jsonpatch.make_patch", jsonpatch_make_patch
    return "dashpersist.patch.make_patch", make_patch


def make_base(rng: random.Random, widgets: int = WIDGETS) -> JsonObject:
    """Return a layout of *widgets* widgets laid out in rows of three."""
    return {
        "widgets": [
            {
                "id": f"w{index}",
                "type": rng.choice(["chart", "table", "metric", "text"]),
                "title": f"Widget {index}",
                "x": (index % 3) * 4,
                "y": (index // 3) * 3,
                "w": 4,
                "h": 3,
                "settings": {"metric": f"m{index}", "color": "blue", "limit": index},
            }
            for index in range(widgets)
        ],
        "theme": "light",
        "filters": {"region": "eu"},
    }


def make_edit(base: JsonObject, rng: random.Random, tag: str) -> JsonObject:
    """Return a copy of *base* with CHANGED_SHARE of its widgets edited."""
    edited = copy.deepcopy(base)
    widgets = edited["widgets"]
    assert isinstance(widgets, list)
    for widget in rng.sample(widgets, int(len(widgets) * CHANGED_SHARE)):
        assert isinstance(widget, dict)
        settings = widget["settings"]
        assert isinstance(settings, dict)
        match rng.randrange(3):
            case 0:
                widget["title"] = f"{widget['title']} ({tag})"
            case 1:
                settings["color"] = f"{tag}-color"
            case _:
                widget["h"] = 4  # grows into the row below: the overlap check has work to do
    return edited


def run(repeat: int = 7) -> list[dict[str, object]]:
    """Return one row per measurement: seconds per call (best of *repeat*) and the ratio."""
    rng = random.Random(4)
    base = make_base(rng)
    local, remote = make_edit(base, rng, "local"), make_edit(base, rng, "remote")
    baseline_name, make_patch = _baseline()
    resolver = ConflictResolver()

    def best(call: Callable[[], object]) -> float:
        number = 5
        return min(timeit.repeat(call, number=number, repeat=repeat)) / number

    patch_seconds = best(lambda: make_patch(base, local))
    merge_seconds = best(lambda: resolver.resolve(base, local, remote))
    result = resolver.resolve(base, local, remote)
    ratio = merge_seconds / patch_seconds
    return [
        {
            "case": f"{WIDGETS} widgets, {CHANGED_SHARE:.0%} changed per side",
            "baseline": baseline_name,
            "make_patch_ms": round(patch_seconds * 1000, 3),
            "merge_ms": round(merge_seconds * 1000, 3),
            "ratio": round(ratio, 2),
            "budget": BUDGET,
            "within_budget": ratio <= BUDGET,
            "conflicts": len(result.conflicts),
        }
    ]


if __name__ == "__main__":
    rows = run()
    columns = list(rows[0])
    widths = {name: max(len(name), *(len(str(row[name])) for row in rows)) for name in columns}
    print("  ".join(name.ljust(widths[name]) for name in columns))
    for row in rows:
        print("  ".join(str(row[name]).ljust(widths[name]) for name in columns))
