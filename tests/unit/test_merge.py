"""Unit tests of dashpersist.merge: scenario S07 and each merge rule, policy and repair."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Annotated, cast

import pytest
from pydantic import BaseModel, Field

from dashpersist.errors import ConfigurationError, ValidationError
from dashpersist.merge import (
    MISSING,
    ConflictResolver,
    MergePolicy,
    detect_conflict,
    policies_from_model,
    suggest_resolution,
)
from dashpersist.models import Layout, Widget
from dashpersist.types import JsonObject, JsonValue

EARLY = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)
LATE = datetime(2025, 1, 1, 9, 5, tzinfo=UTC)


def widget(widget_id: str, **fields: object) -> JsonObject:
    item: JsonObject = {
        "id": widget_id,
        "type": "chart",
        "title": widget_id.upper(),
        "x": 0,
        "y": 0,
        "w": 2,
        "h": 2,
        "settings": {},
    }
    item.update(cast(JsonObject, fields))
    return item


def layout(*widgets: JsonObject, **state: object) -> JsonObject:
    document: JsonObject = {"widgets": list(widgets), "theme": "light", "filters": {}}
    document.update(cast(JsonObject, state))
    return document


def items(document: JsonObject) -> dict[str, JsonObject]:
    return {str(w["id"]): w for w in cast(list[JsonObject], document["widgets"])}


def order(document: JsonObject) -> list[str]:
    return [str(w["id"]) for w in cast(list[JsonObject], document["widgets"])]


def edit(document: JsonObject, widget_id: str, **fields: object) -> None:
    items(document)[widget_id].update(cast(JsonObject, fields))


def delete(document: JsonObject, widget_id: str) -> None:
    document["widgets"] = [
        w for w in cast(list[JsonObject], document["widgets"]) if w["id"] != widget_id
    ]


S07_BASE = layout(widget("w1", x=0), widget("w2", x=2), widget("w3", x=4))


def s07_devices() -> tuple[JsonObject, JsonObject]:
    """Device 1 moves w1 and renames w2; device 2 changes w1's settings and deletes w3."""
    device1, device2 = copy.deepcopy(S07_BASE), copy.deepcopy(S07_BASE)
    edit(device1, "w1", x=6, y=4)
    edit(device1, "w2", title="Revenue")
    edit(device2, "w1", settings={"color": "red"})
    delete(device2, "w3")
    return device1, device2


# --- scenario S07 -------------------------------------------------------------------------


def test_s07_disjoint_edits_from_two_devices_are_all_present() -> None:
    device1, device2 = s07_devices()

    result = ConflictResolver().resolve(S07_BASE, device1, device2)

    merged = items(result.layout)
    assert order(result.layout) == ["w1", "w2"]
    assert (merged["w1"]["x"], merged["w1"]["y"]) == (6, 4)
    assert merged["w1"]["settings"] == {"color": "red"}
    assert merged["w2"]["title"] == "Revenue"
    assert not result.has_conflicts


def test_s07_result_is_the_same_whichever_device_syncs_first() -> None:
    device1, device2 = s07_devices()

    first = ConflictResolver().resolve(S07_BASE, device1, device2)
    second = ConflictResolver().resolve(S07_BASE, device2, device1)

    assert first.layout == second.layout


def test_s07_both_devices_retitling_w1_is_one_conflict_with_the_loser_kept() -> None:
    device1, device2 = s07_devices()
    edit(device1, "w1", title="Sales")
    edit(device2, "w1", title="Costs")

    result = ConflictResolver().resolve(
        S07_BASE, device1, device2, local_time=EARLY, remote_time=LATE
    )

    assert len(result.conflicts) == 1
    conflict = result.conflicts[0]
    assert conflict.path == "/widgets/w1/title"
    assert (conflict.base, conflict.local, conflict.remote) == ("W1", "Sales", "Costs")
    assert conflict.chosen == "Costs"  # the newer edit
    assert items(result.layout)["w1"]["title"] == "Costs"
    assert items(result.layout)["w1"]["settings"] == {"color": "red"}


def test_s07_same_time_conflict_has_one_winner_whichever_device_syncs_first() -> None:
    device1, device2 = s07_devices()
    edit(device1, "w1", title="Sales")
    edit(device2, "w1", title="Costs")
    resolver = ConflictResolver()

    first = resolver.resolve(S07_BASE, device1, device2)
    second = resolver.resolve(S07_BASE, device2, device1)

    assert first.layout == second.layout
    assert first.conflicts[0].chosen == second.conflicts[0].chosen == "Sales"
    assert {first.conflicts[0].local, first.conflicts[0].remote} == {"Sales", "Costs"}


def test_prefer_local_keeps_the_local_value_and_records_the_remote_one() -> None:
    device1, device2 = s07_devices()
    edit(device1, "w1", title="Sales")
    edit(device2, "w1", title="Costs")

    result = ConflictResolver(prefer="local").resolve(S07_BASE, device1, device2)

    assert items(result.layout)["w1"]["title"] == "Sales"
    assert result.conflicts[0].remote == "Costs"
    assert "prefer='local'" in result.conflicts[0].reason


# --- values -------------------------------------------------------------------------------


@pytest.mark.parametrize(("local_value", "remote_value"), [(1, 1.0), (1, True), (0.0, -0.0)])
def test_values_python_calls_equal_but_json_does_not_are_a_conflict(
    local_value: JsonValue, remote_value: JsonValue
) -> None:
    base: JsonObject = {"limit": 5}

    result = ConflictResolver(prefer="remote").resolve(
        base,
        {"limit": local_value},
        {"limit": remote_value},
    )

    assert [c.path for c in result.conflicts] == ["/limit"]
    assert type(result.layout["limit"]) is type(remote_value)


def test_a_number_changed_only_in_type_on_one_side_is_taken() -> None:
    base: JsonObject = {"limit": 1}

    result = ConflictResolver().resolve(base, {"limit": 1.0}, base)

    assert type(result.layout["limit"]) is float
    assert not result.has_conflicts


def test_keys_added_and_removed_on_one_side_each_are_kept_and_removed() -> None:
    base: JsonObject = {"a": 1, "b": 2}

    result = ConflictResolver().resolve(base, {"a": 1, "b": 2, "c": 3}, {"a": 1})

    assert result.layout == {"a": 1, "c": 3}
    assert not result.has_conflicts


def test_a_key_removed_on_one_side_and_changed_on_the_other_keeps_the_change() -> None:
    base: JsonObject = {"theme": "light"}

    result = ConflictResolver(prefer="local").resolve(base, {}, {"theme": "dark"})

    assert result.layout == {"theme": "dark"}
    conflict = result.conflicts[0]
    assert (conflict.path, conflict.kind, conflict.local, conflict.chosen) == (
        "/theme",
        "deleted_changed",
        MISSING,
        "dark",
    )


def test_lists_without_ids_are_values_taken_from_the_side_that_changed_them() -> None:
    base: JsonObject = {"tags": ["a", "b"], "sizes": [1, 2]}

    result = ConflictResolver().resolve(
        base, {"tags": ["a", "b", "c"], "sizes": [1, 2]}, {"tags": ["a", "b"], "sizes": [2]}
    )

    assert result.layout == {"tags": ["a", "b", "c"], "sizes": [2]}
    assert not result.has_conflicts


def test_a_list_without_ids_changed_differently_on_both_sides_is_one_conflict_at_the_list() -> None:
    base: JsonObject = {"tags": ["a"]}

    result = ConflictResolver(prefer="local").resolve(base, {"tags": ["a", "b"]}, {"tags": []})

    assert [(c.path, c.local, c.remote, c.chosen) for c in result.conflicts] == [
        ("/tags", ["a", "b"], [], ["a", "b"])
    ]


def test_newest_keeps_the_later_side_even_when_it_is_local() -> None:
    base: JsonObject = {"theme": "light"}

    result = ConflictResolver().resolve(
        base, {"theme": "dark"}, {"theme": "blue"}, local_time=LATE, remote_time=EARLY
    )

    assert result.layout["theme"] == "dark"
    assert result.conflicts[0].remote == "blue"


def test_mixing_naive_and_aware_times_is_refused() -> None:
    base: JsonObject = {"theme": "light"}

    with pytest.raises(ConfigurationError):
        ConflictResolver().resolve(
            base,
            {"theme": "dark"},
            {"theme": "blue"},
            local_time=LATE,
            remote_time=datetime(2025, 1, 1),
        )


# --- lists of objects with ids ------------------------------------------------------------


def test_items_added_on_both_sides_are_all_kept() -> None:
    base = layout(widget("w1"))
    local = layout(widget("w1"), widget("a", x=2))
    remote = layout(widget("b", x=4), widget("w1"))

    result = ConflictResolver().resolve(base, local, remote)

    assert order(result.layout) == ["b", "w1", "a"]
    assert not result.has_conflicts


def test_a_deletion_of_an_item_untouched_on_the_other_side_deletes_it() -> None:
    base = layout(widget("w1"), widget("w2"))
    local = layout(widget("w1"))

    result = ConflictResolver().resolve(base, local, base)

    assert order(result.layout) == ["w1"]


def test_deleting_an_item_the_other_side_changed_keeps_the_changed_item_and_reports_it() -> None:
    base = layout(widget("w1"), widget("w2"))
    local = layout(widget("w1"))
    remote = layout(widget("w1"), widget("w2", title="Renamed"))

    result = ConflictResolver(prefer="local").resolve(base, local, remote)

    assert items(result.layout)["w2"]["title"] == "Renamed"
    conflict = result.conflicts[0]
    assert (conflict.path, conflict.kind) == ("/widgets/w2", "deleted_changed")
    assert conflict.local is MISSING
    assert conflict.remote == widget("w2", title="Renamed")
    assert conflict.base == widget("w2")


def test_the_same_id_added_on_both_sides_merges_field_by_field() -> None:
    base = layout()
    local = layout({"id": "n", "title": "Mine", "x": 3})
    remote = layout({"id": "n", "title": "Theirs", "y": 5})

    result = ConflictResolver(prefer="remote").resolve(base, local, remote)

    merged = items(result.layout)["n"]
    assert (merged["title"], merged["x"], merged["y"]) == ("Theirs", 3, 5)
    assert [c.path for c in result.conflicts] == ["/widgets/n/title"]
    assert result.conflicts[0].base is MISSING


def test_the_merge_never_duplicates_an_id() -> None:
    base = layout(widget("w1"), widget("w2"))
    local = layout(widget("w2"), widget("w1", title="L"), widget("n"))
    remote = layout(widget("n", x=1), widget("w1", title="R"), widget("w2"))

    result = ConflictResolver().resolve(base, local, remote)

    assert sorted(order(result.layout)) == ["n", "w1", "w2"]


def test_a_reorder_on_one_side_survives_an_edit_on_the_other() -> None:
    base = layout(widget("a"), widget("b"), widget("c"))
    local = layout(widget("c"), widget("a"), widget("b"))
    remote = layout(widget("a"), widget("b", title="B2"), widget("c"))

    result = ConflictResolver().resolve(base, local, remote)

    assert order(result.layout) == ["c", "a", "b"]
    assert items(result.layout)["b"]["title"] == "B2"


def test_moves_of_different_items_on_each_side_are_both_applied() -> None:
    base = layout(*(widget(i) for i in "abcde"))
    local = layout(*(widget(i) for i in "bacde"))  # a after b
    remote = layout(*(widget(i) for i in "abced"))  # e before d

    result = ConflictResolver().resolve(base, local, remote)

    assert order(result.layout) == list("bacde".replace("de", "ed"))


def test_one_item_moved_to_different_places_on_both_sides_is_an_order_conflict() -> None:
    base = layout(*(widget(i) for i in "abcd"))
    local = layout(*(widget(i) for i in "bcad"))
    remote = layout(*(widget(i) for i in "bcda"))

    result = ConflictResolver(prefer="remote").resolve(base, local, remote)

    assert order(result.layout) == list("bcda")
    conflict = result.conflicts[0]
    assert (conflict.path, conflict.kind) == ("/widgets", "order")
    assert (conflict.local, conflict.remote, conflict.chosen) == (
        list("bcad"),
        list("bcda"),
        list("bcda"),
    )


# --- strategies -----------------------------------------------------------------------------


def test_strategy_local_takes_local_whole_but_reports_what_both_changed() -> None:
    device1, device2 = s07_devices()
    edit(device1, "w1", title="Sales")
    edit(device2, "w1", title="Costs")

    result = ConflictResolver().resolve(S07_BASE, device1, device2, "local")

    assert result.layout == device1
    assert [(c.path, c.chosen, c.remote) for c in result.conflicts] == [
        ("/widgets/w1/title", "Sales", "Costs")
    ]


def test_an_unknown_strategy_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        ConflictResolver().resolve({}, {}, {}, "theirs")  # type: ignore[arg-type]


def test_a_document_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ValidationError):
        ConflictResolver().resolve({}, [], {})  # type: ignore[arg-type]


def test_merging_and_repairing_never_change_the_inputs() -> None:
    base, local, remote = overlapping_moves()
    snapshots = copy.deepcopy((base, local, remote))

    result = ConflictResolver().resolve(base, local, remote)

    assert result.has_conflicts  # the repair ran
    assert (base, local, remote) == snapshots
    assert result.layout is not local and result.layout["widgets"] is not local["widgets"]


def test_pydantic_models_are_accepted_and_the_result_is_a_dict() -> None:
    base = Layout(widgets=[Widget(id="w1", type="chart")])
    local = base.model_copy(update={"theme": "dark"})
    remote = Layout(widgets=[Widget(id="w1", type="chart", title="T")])

    result = ConflictResolver().resolve(base, local, remote)

    assert result.layout["theme"] == "dark"
    assert items(result.layout)["w1"]["title"] == "T"


# --- policies -----------------------------------------------------------------------------


def test_a_path_policy_overrides_prefer() -> None:
    base = layout(widget("w1"))
    local, remote = copy.deepcopy(base), copy.deepcopy(base)
    edit(local, "w1", x=3, title="L")
    edit(remote, "w1", x=5, title="R")
    resolver = ConflictResolver(
        prefer="local", policies={"widgets[*].x": MergePolicy.PREFER_REMOTE}
    )

    result = resolver.resolve(base, local, remote)

    merged = items(result.layout)["w1"]
    assert (merged["x"], merged["title"]) == (5, "L")
    assert "policy prefer_remote" in result.conflicts[1].reason


def test_last_writer_wins_uses_the_timestamps_even_when_prefer_is_local() -> None:
    base: JsonObject = {"theme": "light"}
    resolver = ConflictResolver(prefer="local", policies={"theme": MergePolicy.LAST_WRITER_WINS})

    result = resolver.resolve(
        base, {"theme": "dark"}, {"theme": "blue"}, local_time=EARLY, remote_time=LATE
    )

    assert result.layout["theme"] == "blue"


def test_union_keeps_tags_added_on_both_sides_and_drops_removed_ones_without_conflict() -> None:
    base: JsonObject = {"tags": ["a", "b", "c"]}
    resolver = ConflictResolver(policies={"tags": MergePolicy.UNION})

    result = resolver.resolve(base, {"tags": ["a", "b", "c", "x"]}, {"tags": ["y", "a", "c"]})

    assert result.layout["tags"] == ["a", "c", "x", "y"]
    assert not result.has_conflicts


def test_manual_flags_the_conflict_and_keeps_a_provisional_value() -> None:
    base = layout(widget("w1"))
    local, remote = copy.deepcopy(base), copy.deepcopy(base)
    edit(local, "w1", title="L")
    edit(remote, "w1", title="R")
    resolver = ConflictResolver(prefer="local", policies={"/widgets/*/title": MergePolicy.MANUAL})

    result = resolver.resolve(base, local, remote)

    assert result.has_manual_conflicts
    assert result.conflicts[0].manual
    assert items(result.layout)["w1"]["title"] == "L"


def test_a_policy_governs_the_subtree_below_its_path() -> None:
    base: JsonObject = {"filters": {"region": "eu", "year": "2024"}}
    local: JsonObject = {"filters": {"region": "us", "year": "2025"}}
    remote: JsonObject = {"filters": {"region": "asia", "year": "2024"}}
    resolver = ConflictResolver(prefer="local", policies={"filters": MergePolicy.PREFER_REMOTE})

    result = resolver.resolve(base, local, remote)

    assert result.layout == {"filters": {"region": "asia", "year": "2025"}}


def test_prefer_policy_can_let_a_deletion_win_over_a_change() -> None:
    base = layout(widget("w1"), widget("w2"))
    local = layout(widget("w1"))
    remote = layout(widget("w1"), widget("w2", title="Renamed"))
    resolver = ConflictResolver(policies={"widgets[w2]": MergePolicy.PREFER_LOCAL})

    result = resolver.resolve(base, local, remote)

    assert order(result.layout) == ["w1"]
    assert result.conflicts[0].remote == widget("w2", title="Renamed")


def test_an_exact_pattern_beats_a_wildcard_of_the_same_depth() -> None:
    base: JsonObject = {"a": {"b": 1}}
    policies = {"a.*": MergePolicy.PREFER_LOCAL, "a.b": MergePolicy.PREFER_REMOTE}

    result = ConflictResolver(policies=policies).resolve(base, {"a": {"b": 2}}, {"a": {"b": 3}})

    assert result.layout == {"a": {"b": 3}}


@pytest.mark.parametrize("pattern", ["widgets..x", "widgets[*", "a.]b"])
def test_a_malformed_pattern_is_refused(pattern: str) -> None:
    with pytest.raises(ConfigurationError, match="pattern"):
        ConflictResolver(policies={pattern: MergePolicy.UNION})


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="policy"):
        ConflictResolver(policies={"theme": "coin_flip"})  # type: ignore[dict-item]


class TaggedWidget(BaseModel):
    id: str
    x: Annotated[int, MergePolicy.LAST_WRITER_WINS] = 0
    title: Annotated[str, MergePolicy.MANUAL] = ""


class TaggedLayout(BaseModel):
    widgets: list[TaggedWidget] = Field(default_factory=list)
    tags: Annotated[list[str], MergePolicy.UNION] = Field(default_factory=list)
    owner: TaggedWidget | None = None


def test_a_model_declares_its_policies_with_annotated() -> None:
    policies = policies_from_model(TaggedLayout)

    assert policies == {
        "widgets[*].x": MergePolicy.LAST_WRITER_WINS,
        "widgets[*].title": MergePolicy.MANUAL,
        "tags": MergePolicy.UNION,
        "owner.x": MergePolicy.LAST_WRITER_WINS,
        "owner.title": MergePolicy.MANUAL,
    }


def test_a_resolver_for_a_model_applies_its_declared_policies() -> None:
    base = TaggedLayout(tags=["a"], widgets=[TaggedWidget(id="w1")])
    local = TaggedLayout(tags=["a", "l"], widgets=[TaggedWidget(id="w1", title="L")])
    remote = TaggedLayout(tags=["r"], widgets=[TaggedWidget(id="w1", title="R")])

    result = ConflictResolver.for_model(TaggedLayout, prefer="remote").resolve(base, local, remote)

    assert result.layout["tags"] == ["l", "r"]
    assert result.has_manual_conflicts
    assert [c.path for c in result.conflicts] == ["/widgets/w1/title"]


# --- overlap repair -----------------------------------------------------------------------


def overlapping_moves() -> tuple[JsonObject, JsonObject, JsonObject]:
    """Each device moves a different widget into the same free cell (6, 0)."""
    base = layout(widget("w1", x=0), widget("w2", x=2), widget("w3", x=0, y=2))
    local, remote = copy.deepcopy(base), copy.deepcopy(base)
    edit(local, "w1", x=6)
    edit(remote, "w2", x=6)
    return base, local, remote


def test_widgets_moved_into_one_cell_by_each_side_are_repaired_and_reported() -> None:
    base, local, remote = overlapping_moves()

    result = ConflictResolver().resolve(base, local, remote)

    merged = items(result.layout)
    assert (merged["w1"]["x"], merged["w1"]["y"]) == (6, 0)
    assert (merged["w2"]["x"], merged["w2"]["y"]) == (6, 2)  # the later widget moved down
    conflict = result.conflicts[0]
    assert (conflict.path, conflict.reason, conflict.kind) == (
        "/widgets/w2/y",
        "overlap repaired",
        "overlap",
    )
    assert (conflict.local, conflict.remote, conflict.chosen) == (0, 0, 2)


def test_a_repair_that_lands_on_an_earlier_widget_moves_further_down() -> None:
    base, local, remote = overlapping_moves()
    for document in (base, local, remote):
        cast(list[JsonObject], document["widgets"]).insert(0, widget("w0", x=6, y=2))

    result = ConflictResolver().resolve(base, local, remote)

    assert items(result.layout)["w2"]["y"] == 4
    assert [(c.path, c.chosen) for c in result.conflicts] == [("/widgets/w2/y", 4)]


def test_a_repair_pushes_later_widgets_it_lands_on_down_too() -> None:
    base, local, remote = overlapping_moves()
    for document in (base, local, remote):
        cast(list[JsonObject], document["widgets"]).append(widget("w4", x=6, y=2))

    result = ConflictResolver().resolve(base, local, remote)

    assert [(c.path, c.chosen) for c in result.conflicts] == [
        ("/widgets/w2/y", 2),
        ("/widgets/w4/y", 4),
    ]


def test_overlaps_one_side_already_had_are_left_alone() -> None:
    base = layout(widget("w1", x=0), widget("w2", x=4))
    local = copy.deepcopy(base)
    edit(local, "w2", x=1)  # the user put w2 over w1 on purpose

    result = ConflictResolver().resolve(base, local, base)

    assert items(result.layout)["w2"]["y"] == 0
    assert not result.has_conflicts


def test_repair_can_be_turned_off() -> None:
    base, local, remote = overlapping_moves()

    result = ConflictResolver(repair_overlaps=False).resolve(base, local, remote)

    assert items(result.layout)["w2"]["y"] == 0
    assert not result.has_conflicts


# --- detect_conflict and suggest_resolution -------------------------------------------------


@pytest.mark.parametrize(
    ("versions", "checksums", "expected"),
    [
        ((3, 3), ("base", "base", "new"), False),  # the store did not move
        ((3, 4), ("base", "other", "new"), True),  # it moved, to something else
        ((3, 4), ("base", "new", "new"), False),  # the same change made elsewhere
        ((3, 4), ("base", "base", "new"), False),  # a new version with the base's content
        ((3, 4), ("base", "other", "base"), False),  # this writer changed nothing
        ((None, 1), (None, "other", "new"), True),  # created elsewhere meanwhile
    ],
)
def test_detect_conflict_needs_both_sides_to_have_changed_differently(
    versions: tuple[int | None, int], checksums: tuple[str | None, str, str], expected: bool
) -> None:
    base_version, current_version = versions
    base_checksum, current_checksum, new_checksum = checksums

    found = detect_conflict(
        base_version, base_checksum, current_version, current_checksum, new_checksum
    )

    assert found is expected


def test_suggest_resolution_explains_a_safe_merge() -> None:
    base = layout(widget("w1"), widget("w2"))
    mine, theirs = copy.deepcopy(base), copy.deepcopy(base)
    edit(mine, "w1", settings={"color": "red"})
    edit(theirs, "w2", x=4, y=4)

    suggestion = suggest_resolution(base, mine, theirs)

    assert suggestion.strategy == "merge"
    assert suggestion.reason == (
        "the other device only moved widgets; you only changed widget settings: merging is safe"
    )


def test_suggest_resolution_names_the_conflicting_paths() -> None:
    base = layout(widget("w1"))
    mine, theirs = copy.deepcopy(base), copy.deepcopy(base)
    edit(mine, "w1", title="L")
    edit(theirs, "w1", title="R")

    suggestion = suggest_resolution(base, mine, theirs)

    assert suggestion.strategy == "merge"
    assert "both changed /widgets/w1/title" in suggestion.reason


@pytest.mark.parametrize(
    ("side", "expected"), [("local", "remote"), ("remote", "local"), ("both", "local")]
)
def test_suggest_resolution_takes_a_side_when_the_other_changed_nothing(
    side: str, expected: str
) -> None:
    base: JsonObject = {"theme": "light"}
    changed: JsonObject = {"theme": "dark"}
    local = base if side == "local" else changed
    remote = base if side == "remote" else changed

    assert suggest_resolution(base, local, remote).strategy == expected
