"""Laws of the diff engine: the round trip, the empty diff, untouched inputs, one insert
costs one operation, and JSON types (1, 1.0, true) are told apart.

Equality is canonical JSON (`canonical_json`): types count, key order does not.
"""

from __future__ import annotations

from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st

from dashpersist._canonical import canonical_json, copy_json
from dashpersist.errors import PatchError
from dashpersist.patch import apply_patch, apply_patch_to_value, make_patch
from dashpersist.types import JsonObject, JsonValue
from tests.strategies import json_objects, json_scalars, json_values, layout_edits, layouts, widgets

STRUCTURAL_EDITS = ("insert", "delete", "reorder")


@st.composite
def edited_layout_pairs(
    draw: st.DrawFn, kinds: tuple[str, ...] | None = None
) -> tuple[JsonObject, JsonObject]:
    """Return a layout and a copy changed by a few edits (ids kept, so the id diff runs)."""
    base = draw(layouts())
    options: dict[str, Any] = {"new_ids": ("n1", "n2", "n3", "n4"), "max_edits": 8}
    if kinds is not None:
        options["kinds"] = kinds
    return base, draw(layout_edits(base, **options))


def _widgets(layout: JsonObject) -> list[JsonValue]:
    return cast(list[JsonValue], layout["widgets"])


@given(json_objects, json_objects)
def test_applying_the_patch_from_a_to_b_to_a_gives_b(a: JsonObject, b: JsonObject) -> None:
    patch = make_patch(a, b)

    assert canonical_json(apply_patch(a, patch)) == canonical_json(b)


@given(json_values, json_values)
def test_the_round_trip_holds_for_any_json_values_at_the_top(a: JsonValue, b: JsonValue) -> None:
    patch = make_patch(a, b)

    assert canonical_json(apply_patch_to_value(a, patch)) == canonical_json(b)


@given(edited_layout_pairs())
def test_the_round_trip_holds_for_a_layout_and_its_edited_copy(
    pair: tuple[JsonObject, JsonObject],
) -> None:
    a, b = pair

    patch = make_patch(a, b)

    assert canonical_json(apply_patch(a, patch)) == canonical_json(b)


@given(edited_layout_pairs(STRUCTURAL_EDITS))
def test_inserts_deletes_and_reorders_of_widgets_round_trip_without_replacing_the_list(
    pair: tuple[JsonObject, JsonObject],
) -> None:
    a, b = pair

    patch = make_patch(a, b)

    assert canonical_json(apply_patch(a, patch)) == canonical_json(b)
    assert all(operation["path"] != "/widgets" for operation in patch)
    assert len(patch) <= len(_widgets(a)) + len(_widgets(b))


@given(edited_layout_pairs())
def test_widgets_shared_by_both_layouts_give_the_patch_of_equal_copies(
    pair: tuple[JsonObject, JsonObject],
) -> None:
    # The manager diffs documents that share the validator's copy of every unchanged
    # widget; the identity shortcuts must give the patch of unshared documents.
    a, b = pair
    by_encoding = {canonical_json(widget): widget for widget in _widgets(a)}
    shared = {**b, "widgets": [by_encoding.get(canonical_json(w), w) for w in _widgets(b)]}

    patch = make_patch(a, shared)

    assert patch == make_patch(a, copy_json(shared))
    assert canonical_json(apply_patch(a, patch)) == canonical_json(b)


@given(layouts(), layouts())
def test_the_round_trip_holds_for_unrelated_layouts(a: JsonObject, b: JsonObject) -> None:
    patch = make_patch(a, b)

    assert canonical_json(apply_patch(a, patch)) == canonical_json(b)


@given(json_values)
def test_the_patch_from_a_document_to_itself_or_its_copy_is_empty(a: JsonValue) -> None:
    copy = apply_patch_to_value(a, [])

    assert make_patch(a, a) == []
    assert make_patch(a, copy) == []


@given(edited_layout_pairs())
def test_neither_function_changes_its_inputs(pair: tuple[JsonObject, JsonObject]) -> None:
    a, b = pair
    a_bytes, b_bytes = canonical_json(a), canonical_json(b)

    patch = make_patch(a, b)
    patch_bytes = canonical_json(cast(JsonValue, patch))
    result = apply_patch(a, patch)
    result["mutated"] = True
    for item in _widgets(result):
        cast(JsonObject, item)["mutated"] = True

    assert canonical_json(a) == a_bytes
    assert canonical_json(b) == b_bytes
    assert canonical_json(cast(JsonValue, patch)) == patch_bytes


@given(layouts(), st.data())
def test_a_widget_inserted_at_the_front_is_one_add_operation(
    layout: JsonObject, data: st.DataObject
) -> None:
    new_widget = data.draw(widgets("brand-new"))
    after = copy_json(layout)
    _widgets(after).insert(0, new_widget)

    patch = make_patch(layout, after)

    assert patch == [{"op": "add", "path": "/widgets/0", "value": new_widget}]


@given(edited_layout_pairs(("delete",)))
def test_deleting_widgets_is_one_remove_per_widget(pair: tuple[JsonObject, JsonObject]) -> None:
    a, b = pair
    deleted = len(_widgets(a)) - len(_widgets(b))

    patch = make_patch(a, b)

    assert [operation["op"] for operation in patch] == ["remove"] * deleted


@given(json_scalars, json_scalars)
def test_scalars_of_different_json_types_or_values_always_give_a_patch(
    a: JsonValue, b: JsonValue
) -> None:
    patch = make_patch(
        {"a": a, "nested": [{"id": 1, "v": a}]}, {"a": b, "nested": [{"id": 1, "v": b}]}
    )

    assert (patch == []) == (canonical_json(a) == canonical_json(b))


def test_true_is_a_change_from_one() -> None:
    assert make_patch({"a": 1}, {"a": True}) == [{"op": "replace", "path": "/a", "value": True}]
    assert make_patch({"a": 0}, {"a": False}) != []
    assert make_patch({"a": 1}, {"a": 1.0}) != []
    assert make_patch({"a": [{"id": "w", "x": 1}]}, {"a": [{"id": "w", "x": True}]}) != []


operation_members = st.fixed_dictionaries(
    {},
    optional={
        "op": st.sampled_from(["add", "remove", "replace", "move", "copy", "test", "spam"])
        | json_scalars,
        "path": st.sampled_from(["", "/", "/a", "/a/0", "/a/-", "/0", "/01", "/a/b/c", "x"])
        | json_values,
        "from": st.sampled_from(["", "/a", "/a/0", "/b"]) | json_values,
        "value": json_values,
    },
)


@given(json_values, st.lists(operation_members | json_values, max_size=4) | json_values)
def test_a_patch_either_applies_or_raises_patch_error(doc: JsonValue, patch: Any) -> None:
    doc_bytes = canonical_json(doc)

    try:
        apply_patch_to_value(doc, patch)
        outcome = "applied"
    except PatchError as error:
        outcome = str(error)

    assert outcome == "applied" or outcome.startswith(("patch operation", "a patch is"))
    assert canonical_json(doc) == doc_bytes
