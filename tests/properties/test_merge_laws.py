"""Laws of the three-way merge (issue #4, scenario S07), as Hypothesis properties.

Both sides are generated as edits of one base (moves, resizes, retitles, settings, inserts,
deletes, reorders, theme and filter changes), so the merge by id is really exercised. Each
property names the law it states.
"""

from __future__ import annotations

from typing import cast

from hypothesis import given
from hypothesis import strategies as st

from dashpersist._canonical import canonical_json
from dashpersist.merge import MISSING, ConflictResolver, MergeResult, Missing
from dashpersist.types import JsonObject, JsonValue
from tests.strategies import EDIT_KINDS, layout_edits, layouts

NO_REORDER = tuple(kind for kind in EDIT_KINDS if kind != "reorder")
ORDER_EDITS = ("reorder", "insert", "delete", "retitle")
WIDGET_EDITS = ("move", "resize", "retitle", "settings", "insert", "delete")

resolver = ConflictResolver()
without_repair = ConflictResolver(repair_overlaps=False)


@st.composite
def base_and_edit(draw: st.DrawFn) -> tuple[JsonObject, JsonObject]:
    base = draw(layouts())
    return base, draw(layout_edits(base))


@st.composite
def base_and_two_edits(
    draw: st.DrawFn, kinds: tuple[str, ...] = EDIT_KINDS
) -> tuple[JsonObject, JsonObject, JsonObject]:
    """A base and two edits of it. Some cases edit only the first two widgets, or only the
    list order, so that the sides collide often: same field, delete against change,
    both moving one widget, overlaps."""
    base = draw(layouts())
    focus = (
        frozenset(str(widget_id) for widget_id in ids(base)[:2]) if draw(st.booleans()) else None
    )
    if "reorder" in kinds and draw(st.booleans()):
        kinds = ORDER_EDITS
    local = draw(layout_edits(base, widget_ids=focus, kinds=kinds))
    return base, local, draw(layout_edits(base, widget_ids=focus, kinds=kinds))


def same_json(a: JsonValue, b: JsonValue) -> bool:
    """Equal as JSON: 1, 1.0 and true differ (Python's == says they are equal)."""
    return canonical_json(a) == canonical_json(b)


def ids(document: JsonObject) -> list[JsonValue]:
    return [cast(JsonObject, widget)["id"] for widget in cast(list[JsonValue], document["widgets"])]


def conflict_paths(result: MergeResult) -> set[str]:
    return {conflict.path for conflict in result.conflicts}


def value_at(document: JsonValue | Missing, pointer: str) -> JsonValue | Missing:
    """Resolve a conflict path: list items of id-keyed lists are named by id."""
    node = document
    for raw in pointer.split("/")[1:]:
        segment = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node.get(segment, MISSING)
        elif isinstance(node, list):
            found = [item for item in node if isinstance(item, dict) and item["id"] == segment]
            node = found[0] if found else MISSING
        else:
            return MISSING
    return node


def differs(a: JsonValue | Missing, b: JsonValue | Missing) -> bool:
    if a is MISSING or b is MISSING:
        return a is not b
    return not same_json(a, b)


def changed_differently(
    base: JsonValue | Missing, local: JsonValue | Missing, remote: JsonValue | Missing
) -> bool:
    return differs(base, local) and differs(base, remote) and differs(local, remote)


def predecessor(order: list[JsonValue], widget_id: JsonValue) -> JsonValue:
    index = order.index(widget_id)
    return order[index - 1] if index else None


def expected_conflict_paths(base: JsonObject, local: JsonObject, remote: JsonObject) -> set[str]:
    """The paths both sides changed differently, worked out from the layout's shape alone.

    Scalars (theme, widget fields, each setting and filter) are the unit of change; a widget
    deleted on one side and changed on the other is one conflict at the widget; a widget both
    sides added after different surviving widgets is an order conflict of the list.
    (Reorders are left out here: which widget "moved" is the merge's own reading.)
    """
    paths = (
        {"/theme"}
        if changed_differently(*(doc["theme"] for doc in (base, local, remote)))
        else set()
    )
    for name in {*cast(JsonObject, local["filters"]), *cast(JsonObject, remote["filters"])}:
        values = (value_at(doc, f"/filters/{name}") for doc in (base, local, remote))
        if changed_differently(*values):
            paths.add(f"/filters/{name}")

    def survives(widget_id: JsonValue) -> bool:
        base_w, local_w, remote_w = (
            value_at(doc, f"/widgets/{widget_id}") for doc in (base, local, remote)
        )
        if local_w is MISSING:
            return differs(base_w, remote_w)
        if remote_w is MISSING:
            return differs(base_w, local_w)
        return True

    survivors = {widget_id for widget_id in {*ids(local), *ids(remote)} if survives(widget_id)}
    local_order = [i for i in ids(local) if i in survivors]
    remote_order = [i for i in ids(remote) if i in survivors]
    for widget_id in (set(ids(local)) & set(ids(remote))) - set(ids(base)):
        if predecessor(local_order, widget_id) != predecessor(remote_order, widget_id):
            paths.add("/widgets")
    for widget_id in {*ids(local), *ids(remote)}:
        path = f"/widgets/{widget_id}"
        base_w, local_w, remote_w = (value_at(doc, path) for doc in (base, local, remote))
        if not changed_differently(base_w, local_w, remote_w):
            continue
        if local_w is MISSING or remote_w is MISSING:
            paths.add(path)
            continue
        fields = {*cast(JsonObject, local_w), *cast(JsonObject, remote_w)} - {"settings"}
        settings = {*cast(JsonObject, cast(JsonObject, local_w)["settings"])}
        settings |= {*cast(JsonObject, cast(JsonObject, remote_w)["settings"])}
        for sub in [*fields, *(f"settings/{name}" for name in settings)]:
            values = (value_at(doc, f"{path}/{sub}") for doc in (base, local, remote))
            if changed_differently(*values):
                paths.add(f"{path}/{sub}")
    return paths


@given(base_and_edit())
def test_merging_with_an_unchanged_remote_gives_local(case: tuple[JsonObject, JsonObject]) -> None:
    base, edited = case

    result = resolver.resolve(base, edited, base)

    assert same_json(result.layout, edited)
    assert result.conflicts == []


@given(base_and_edit())
def test_merging_with_an_unchanged_local_gives_remote(case: tuple[JsonObject, JsonObject]) -> None:
    base, edited = case

    result = resolver.resolve(base, base, edited)

    assert same_json(result.layout, edited)
    assert result.conflicts == []


@given(base_and_edit())
def test_the_same_edit_on_both_sides_merges_to_it_without_conflict(
    case: tuple[JsonObject, JsonObject],
) -> None:
    base, edited = case

    result = resolver.resolve(base, edited, edited)

    assert same_json(result.layout, edited)
    assert result.conflicts == []


@given(st.data())
def test_edits_on_disjoint_paths_never_conflict_and_both_survive(data: st.DataObject) -> None:
    base = data.draw(layouts())
    every_id = [str(widget_id) for widget_id in ids(base)]
    mine = frozenset(data.draw(st.lists(st.sampled_from(every_id)))) if every_id else frozenset()
    theirs = frozenset(every_id) - mine
    local = data.draw(
        layout_edits(base, widget_ids=mine, new_ids=("a1", "a2"), kinds=(*WIDGET_EDITS, "theme"))
    )
    remote = data.draw(
        layout_edits(
            base, widget_ids=theirs, new_ids=("b1", "b2"), kinds=(*WIDGET_EDITS, "filters")
        )
    )

    # Repair off: two disjoint moves may still land on one cell (a repair, not a conflict).
    result = without_repair.resolve(base, local, remote)

    assert result.conflicts == []
    merged = {widget["id"]: widget for widget in cast(list[JsonObject], result.layout["widgets"])}
    expected = {
        **{w["id"]: w for w in cast(list[JsonObject], local["widgets"]) if w["id"] not in theirs},
        **{w["id"]: w for w in cast(list[JsonObject], remote["widgets"]) if w["id"] not in mine},
    }
    assert same_json(cast(JsonValue, merged), cast(JsonValue, expected))
    assert result.layout["theme"] == local["theme"]
    assert same_json(result.layout["filters"], remote["filters"])


@given(base_and_two_edits())
def test_taking_local_equals_taking_remote_with_the_sides_swapped(
    case: tuple[JsonObject, JsonObject, JsonObject],
) -> None:
    base, x, y = case

    took_local = resolver.resolve(base, x, y, "local")
    took_remote = resolver.resolve(base, y, x, "remote")

    assert same_json(took_local.layout, x)
    assert same_json(took_remote.layout, x)
    assert [(c.path, c.chosen, c.local, c.remote) for c in took_local.conflicts] == [
        (c.path, c.chosen, c.remote, c.local) for c in took_remote.conflicts
    ]


@given(base_and_two_edits())
def test_swapping_local_and_remote_keeps_the_conflicting_paths(
    case: tuple[JsonObject, JsonObject, JsonObject],
) -> None:
    base, x, y = case

    assert conflict_paths(resolver.resolve(base, x, y)) == conflict_paths(
        resolver.resolve(base, y, x)
    )


@given(base_and_two_edits())
def test_which_device_syncs_first_does_not_change_the_newest_rule_result(
    case: tuple[JsonObject, JsonObject, JsonObject],
) -> None:
    base, x, y = case

    first = resolver.resolve(base, x, y)
    second = resolver.resolve(base, y, x)

    assert same_json(first.layout, second.layout)
    assert [(c.path, c.local, c.remote, c.chosen) for c in first.conflicts] == [
        (c.path, c.remote, c.local, c.chosen) for c in second.conflicts
    ]


@given(base_and_two_edits())
def test_prefer_local_with_the_sides_swapped_equals_prefer_remote(
    case: tuple[JsonObject, JsonObject, JsonObject],
) -> None:
    base, x, y = case

    mine_first = ConflictResolver(prefer="local").resolve(base, x, y)
    theirs_first = ConflictResolver(prefer="remote").resolve(base, y, x)

    assert same_json(mine_first.layout, theirs_first.layout)
    assert [c.chosen for c in mine_first.conflicts] == [c.chosen for c in theirs_first.conflicts]


@given(base_and_two_edits(kinds=NO_REORDER))
def test_reported_conflicts_are_exactly_the_paths_changed_differently_on_both_sides(
    case: tuple[JsonObject, JsonObject, JsonObject],
) -> None:
    base, x, y = case

    result = without_repair.resolve(base, x, y)

    assert conflict_paths(result) == expected_conflict_paths(base, x, y)


@given(base_and_two_edits())
def test_every_conflict_keeps_the_three_values_and_chooses_one_side(
    case: tuple[JsonObject, JsonObject, JsonObject],
) -> None:
    base, x, y = case

    result = without_repair.resolve(base, x, y)

    for conflict in result.conflicts:
        if conflict.kind == "order":
            continue
        for recorded, document in (
            (conflict.base, base),
            (conflict.local, x),
            (conflict.remote, y),
        ):
            assert not differs(recorded, value_at(document, conflict.path))
        assert conflict.chosen in (conflict.local, conflict.remote)
        assert not differs(conflict.chosen, value_at(result.layout, conflict.path))


@given(base_and_two_edits())
def test_merging_is_deterministic(case: tuple[JsonObject, JsonObject, JsonObject]) -> None:
    base, x, y = case

    first, second = resolver.resolve(base, x, y), resolver.resolve(base, x, y)

    assert first == second
    # Key order too: the same bytes, not only equal dicts.
    assert repr(first.layout) == repr(second.layout)


@given(base_and_two_edits())
def test_the_merge_never_duplicates_an_id_and_keeps_every_kept_widget(
    case: tuple[JsonObject, JsonObject, JsonObject],
) -> None:
    base, x, y = case

    merged_ids = ids(resolver.resolve(base, x, y).layout)

    assert len(merged_ids) == len(set(merged_ids))
    added = (set(ids(x)) | set(ids(y))) - set(ids(base))
    untouched_by_a_deletion = set(ids(x)) & set(ids(y))
    assert added | untouched_by_a_deletion <= set(merged_ids)


@given(base_and_two_edits(kinds=("move", "resize", "insert")))
def test_the_repaired_grid_has_no_overlap_that_neither_side_had(
    case: tuple[JsonObject, JsonObject, JsonObject],
) -> None:
    base, x, y = case

    result = resolver.resolve(base, x, y)

    def rects(document: JsonObject) -> dict[JsonValue, tuple[int, int, int, int]]:
        return {
            w["id"]: (cast(int, w["x"]), cast(int, w["y"]), cast(int, w["w"]), cast(int, w["h"]))
            for w in cast(list[JsonObject], document["widgets"])
        }

    def overlap(a: tuple[int, ...] | None, b: tuple[int, ...] | None) -> bool:
        if a is None or b is None:
            return False
        return (
            a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]
        )

    merged, local, remote = rects(result.layout), rects(x), rects(y)
    for a in merged:
        for b in merged:
            if a != b and overlap(merged[a], merged[b]):
                assert overlap(local.get(a), local.get(b)) or overlap(remote.get(a), remote.get(b))
