"""Unit tests of `dashpersist.patch`: failure messages, pointer escaping, identity diffs."""

from __future__ import annotations

from typing import Any

import pytest

from dashpersist._canonical import canonical_json
from dashpersist.errors import DashPersistError, PatchError
from dashpersist.patch import apply_patch, apply_patch_to_value, make_patch
from dashpersist.types import JsonObject, JsonPatch, JsonValue

PLAINTEXT = "plaintext-value-4711"
"""A document value no error message may quote."""


def widget(widget_id: str, **fields: Any) -> JsonObject:
    """Return a small widget with the given id and fields."""
    return {"id": widget_id, "type": "chart", "title": widget_id.upper(), "x": 0, **fields}


def ids_of(layout: JsonObject) -> list[Any]:
    widgets = layout["widgets"]
    assert isinstance(widgets, list)
    return [item["id"] for item in widgets if isinstance(item, dict)]


# --- failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        pytest.param(
            [{"op": "test", "path": "/a", "value": 1}, {"op": "test", "path": "/key", "value": 1}],
            r"^patch operation 1 \(test at '/key'\): the tested value differs",
            id="failed-test",
        ),
        pytest.param(
            [{"op": "remove", "path": "/missing/deeper"}],
            r"^patch operation 0 \(remove at '/missing/deeper'\)",
            id="missing-path",
        ),
        pytest.param(
            [{"op": "add", "path": "/list/5", "value": PLAINTEXT}],
            r"^patch operation 0 \(add at '/list/5'\)",
            id="add-beyond-the-end",
        ),
        pytest.param(
            [{"op": "test", "path": "/list/01", "value": PLAINTEXT}],
            r"^patch operation 0 \(test at '/list/01'\)",
            id="leading-zero-index",
        ),
        pytest.param(
            [{"op": "add", "path": "/a", "value": 1}, {"op": "replace", "path": "/a"}],
            r"^patch operation 1 \(replace at '/a'\): missing 'value'",
            id="missing-value",
        ),
        pytest.param(
            [{"op": "move", "from": "/nope", "path": "/b"}],
            r"^patch operation 0 \(move from '/nope' to '/b'\)",
            id="missing-from-location",
        ),
        pytest.param(
            [{"op": "copy", "path": "/b"}],
            r"^patch operation 0 \(copy at '/b'\): 'from' must be a string",
            id="missing-from",
        ),
        pytest.param(
            [{"op": "spam", "path": "/a", "value": PLAINTEXT}],
            r"^patch operation 0 at '/a': unknown or missing 'op'",
            id="unknown-op",
        ),
        pytest.param(
            [{"op": "add", "path": None, "value": PLAINTEXT}],
            r"^patch operation 0 \(add\): 'path' must be a string",
            id="null-path",
        ),
        pytest.param(
            [{"op": "add", "path": "key", "value": PLAINTEXT}],
            r"^patch operation 0 \(add at 'key'\)",
            id="path-without-slash",
        ),
        pytest.param([PLAINTEXT], r"^patch operation 0 is a string, not an object", id="not-an-op"),
        pytest.param({"op": "add", "path": "/a"}, r"^a patch is a list of operations", id="dict"),
        pytest.param(PLAINTEXT, r"^a patch is a list of operations, not a string", id="string"),
    ],
)
def test_a_failing_patch_raises_patch_error_naming_index_and_path_never_the_value(
    patch: Any, expected: str
) -> None:
    doc: JsonObject = {"a": 1, "key": PLAINTEXT, "list": [PLAINTEXT, PLAINTEXT]}

    with pytest.raises(PatchError, match=expected) as caught:
        apply_patch(doc, patch)

    assert PLAINTEXT not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__
    assert isinstance(caught.value, DashPersistError)


def test_a_failed_patch_leaves_the_document_unchanged() -> None:
    doc: JsonObject = {"a": {"b": 1}, "list": [1, 2]}
    patch: JsonPatch = [
        {"op": "replace", "path": "/a/b", "value": 2},
        {"op": "remove", "path": "/list/0"},
        {"op": "test", "path": "/list/0", "value": 3},
    ]

    with pytest.raises(PatchError, match="operation 2"):
        apply_patch(doc, patch)

    assert doc == {"a": {"b": 1}, "list": [1, 2]}


def test_apply_patch_refuses_to_turn_the_object_into_another_kind_of_value() -> None:
    patch: JsonPatch = [{"op": "replace", "path": "", "value": [1]}]

    with pytest.raises(PatchError, match="replaces the document object with an array"):
        apply_patch({"a": 1}, patch)
    assert apply_patch_to_value({"a": 1}, patch) == [1]


def test_a_document_that_is_not_json_raises_patch_error() -> None:
    with pytest.raises(PatchError, match="not JSON"):
        apply_patch({"huge": 2**70}, [])


def test_the_result_shares_nothing_with_the_patch() -> None:
    value: JsonObject = {"nested": [1]}
    patch: JsonPatch = [{"op": "add", "path": "/v", "value": value}]

    result = apply_patch({}, patch)
    nested = result["v"]
    assert isinstance(nested, dict)
    nested["nested"] = []

    assert value == {"nested": [1]}


# --- JSON Pointer escaping ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "pointer"),
    [("a/b", "/a~1b"), ("m~n", "/m~0n"), ("~1", "/~01"), ("/~", "/~1~0"), ("", "/"), (" ", "/ ")],
)
def test_keys_with_slash_and_tilde_are_escaped_in_paths(key: str, pointer: str) -> None:
    before: JsonObject = {key: 1, "other": 2}
    after: JsonObject = {key: 2, "other": 2}

    patch = make_patch(before, after)

    assert patch == [{"op": "replace", "path": pointer, "value": 2}]
    assert apply_patch(before, patch) == after


def test_escaped_keys_inside_an_identified_item_round_trip() -> None:
    before: JsonObject = {"widgets": [widget("a", settings={"x/y": 1, "~": 1})]}
    after: JsonObject = {"widgets": [widget("a", settings={"x/y": 2})]}

    patch = make_patch(before, after)

    assert patch == [
        {"op": "replace", "path": "/widgets/0/settings/x~1y", "value": 2},
        {"op": "remove", "path": "/widgets/0/settings/~0"},
    ]
    assert apply_patch(before, patch) == after


# --- lists of identified items --------------------------------------------------------------


def test_a_moved_item_is_one_move_operation() -> None:
    before: JsonObject = {"widgets": [widget(name) for name in "abcdef"]}
    after: JsonObject = {"widgets": [widget(name) for name in "bcdeaf"]}

    patch = make_patch(before, after)

    assert patch == [{"op": "move", "from": "/widgets/0", "path": "/widgets/4"}]
    assert ids_of(apply_patch(before, patch)) == list("bcdeaf")


def test_a_moved_and_changed_item_is_a_move_then_a_change_at_its_new_index() -> None:
    before: JsonObject = {"widgets": [widget(name) for name in "abcd"]}
    after: JsonObject = {"widgets": [widget("d", title="New"), *(widget(n) for n in "abc")]}

    patch = make_patch(before, after)

    assert patch == [
        {"op": "move", "from": "/widgets/3", "path": "/widgets/0"},
        {"op": "replace", "path": "/widgets/0/title", "value": "New"},
    ]
    assert apply_patch(before, patch) == after


def test_a_changed_item_gets_a_nested_patch_not_a_replacement() -> None:
    before: JsonObject = {"widgets": [widget(n, settings={"limit": 5}) for n in "abc"]}
    after: JsonObject = {"widgets": [widget(n, settings={"limit": 5}) for n in "abc"]}
    after["widgets"][1]["settings"]["limit"] = 6  # type: ignore[index,call-overload]

    patch = make_patch(before, after)

    assert patch == [{"op": "replace", "path": "/widgets/1/settings/limit", "value": 6}]


def test_removals_inserts_and_moves_together_apply_in_order() -> None:
    before: JsonObject = {"widgets": [widget(name) for name in "abcdefg"]}
    after: JsonObject = {"widgets": [widget(name) for name in "gXbdYfa"]}

    patch = make_patch(before, after)

    assert [operation["op"] for operation in patch].count("remove") == 2
    assert [operation["op"] for operation in patch].count("add") == 2
    assert ids_of(apply_patch(before, patch)) == list("gXbdYfa")


def test_items_without_unique_ids_are_diffed_by_position() -> None:
    before: JsonObject = {"items": [{"id": 1}, {"id": 1}, {"id": 2}]}
    after: JsonObject = {"items": [{"id": 1}, {"id": 1}, {"id": 3}]}

    patch = make_patch(before, after)

    assert patch == [{"op": "replace", "path": "/items/2/id", "value": 3}]


def test_an_insertion_into_a_plain_list_is_one_add() -> None:
    before: JsonObject = {"tags": ["a", "b", "c", "d"]}
    after: JsonObject = {"tags": ["a", "b", "new", "c", "d"]}

    patch = make_patch(before, after)

    assert patch == [{"op": "add", "path": "/tags/2", "value": "new"}]


def test_a_removal_from_a_plain_list_is_one_remove() -> None:
    before: JsonObject = {"tags": [1, 2, 3, 2, 1]}
    after: JsonObject = {"tags": [1, 2, 2, 1]}

    patch = make_patch(before, after)

    assert patch == [{"op": "remove", "path": "/tags/2"}]


# --- JSON types ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [(1, True), (0, False), (1, 1.0), (True, 1.0), (0.0, -0.0), ("1", 1), (None, False)],
)
def test_values_python_may_call_equal_are_different_json(old: Any, new: Any) -> None:
    before: JsonObject = {"v": old, "w": [{"id": "a", "v": old}]}
    after: JsonObject = {"v": new, "w": [{"id": "a", "v": new}]}

    patch = make_patch(before, after)

    assert patch == [
        {"op": "replace", "path": "/v", "value": new},
        {"op": "replace", "path": "/w/0/v", "value": new},
    ]
    assert canonical_json(apply_patch(before, patch)) == canonical_json(after)


def test_key_order_alone_is_no_change() -> None:
    before: JsonObject = {"w": [{"id": "a", "s": {"x": 1, "y": 2}}], "o": {"p": 1, "q": 2}}
    after: JsonObject = {"w": [{"s": {"y": 2, "x": 1}, "id": "a"}], "o": {"q": 2, "p": 1}}

    assert make_patch(before, after) == []


def test_integers_beyond_64_bits_are_still_compared_exactly() -> None:
    before: JsonObject = {"big": [2**70, 1]}
    after: JsonObject = {"big": [2**70 + 1, 1]}

    assert make_patch(before, after) == [{"op": "replace", "path": "/big/0", "value": 2**70 + 1}]


# --- fast paths: one insertion or removal, common ends, chunked comparison -------------------

LONG = 300
"""Longer than the length from which `_differing` compares chunks of items."""


def numbered(count: int) -> JsonObject:
    """Return a layout of *count* widgets w0, w1, ..., each with numbers of every JSON type."""
    items: list[JsonValue] = [
        widget(f"w{i}", limit=i * 7, opacity=i / 4, stacked=i % 2 == 0) for i in range(count)
    ]
    return {"widgets": items}


def items_of(doc: JsonObject, name: str = "widgets") -> list[Any]:
    items = doc[name]
    assert isinstance(items, list)
    return items


@pytest.mark.parametrize("count", [1, 5, LONG])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_one_insertion_is_one_add_at_its_index(count: int, where: str) -> None:
    index = {"start": 0, "middle": count // 2, "end": count}[where]
    before, after = numbered(count), numbered(count)
    items_of(after).insert(index, widget("new"))

    patch = make_patch(before, after)

    assert patch == [{"op": "add", "path": f"/widgets/{index}", "value": widget("new")}]
    assert apply_patch(before, patch) == after


@pytest.mark.parametrize("count", [1, 5, LONG])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_one_removal_is_one_remove_at_its_index(count: int, where: str) -> None:
    index = {"start": 0, "middle": count // 2, "end": count - 1}[where]
    before, after = numbered(count), numbered(count)
    del items_of(after)[index]

    patch = make_patch(before, after)

    assert patch == [{"op": "remove", "path": f"/widgets/{index}"}]
    assert apply_patch(before, patch) == after


def test_an_insertion_next_to_an_equal_item_is_one_add_where_they_first_differ() -> None:
    before: JsonObject = {"tags": ["a", "b"]}
    after: JsonObject = {"tags": ["a", "a", "b"]}

    assert make_patch(before, after) == [{"op": "add", "path": "/tags/1", "value": "a"}]


@pytest.mark.parametrize("count", [6, LONG])
def test_an_insertion_and_a_change_elsewhere_are_an_add_and_a_change_at_the_new_index(
    count: int,
) -> None:
    before, after = numbered(count), numbered(count)
    items_of(after)[-1]["title"] = "Changed"
    items_of(after).insert(1, widget("new"))

    patch = make_patch(before, after)

    assert patch == [
        {"op": "add", "path": "/widgets/1", "value": widget("new")},
        {"op": "replace", "path": f"/widgets/{count}/title", "value": "Changed"},
    ]
    assert apply_patch(before, patch) == after


@pytest.mark.parametrize("count", [8, LONG])
def test_a_move_between_common_ends_names_indices_of_the_whole_array(count: int) -> None:
    names = [f"w{i}" for i in range(count)]
    moved = [*names[:3], names[5], *names[3:5], *names[6:]]  # w5 now before w3
    before: JsonObject = {"widgets": [widget(name) for name in names]}
    after: JsonObject = {"widgets": [widget(name) for name in moved]}

    patch = make_patch(before, after)

    assert patch == [{"op": "move", "from": "/widgets/5", "path": "/widgets/3"}]
    assert ids_of(apply_patch(before, patch)) == moved


@pytest.mark.parametrize(
    "items",
    [
        pytest.param([{"id": "a"}, {"id": "a"}, {"id": "b"}], id="duplicate-ids"),
        pytest.param([{"id": "a"}, {"name": "no id"}, {"id": "b"}], id="missing-id"),
        pytest.param([{"id": "a"}, ["not", "an", "object"], {"id": "b"}], id="not-an-object"),
        pytest.param([{"id": ["unhashable"]}, {"id": "a"}, {"id": "b"}], id="unhashable-id"),
    ],
)
def test_without_unique_ids_an_insertion_and_a_change_are_diffed_by_position(
    items: list[JsonValue],
) -> None:
    before: JsonObject = {"items": items}
    after: JsonObject = {"items": [*items[:2], {"id": "new"}, {"id": "b", "x": 1}]}

    patch = make_patch(before, after)

    # By id it would be an add at 2 and an add at 3/x; by position, the ends are trimmed.
    assert patch == [
        {"op": "replace", "path": "/items/2/id", "value": "new"},
        {"op": "add", "path": "/items/3", "value": {"id": "b", "x": 1}},
    ]
    assert canonical_json(apply_patch(before, patch)) == canonical_json(after)


def test_ids_python_calls_equal_are_one_id_and_the_change_is_inside_the_item() -> None:
    before: JsonObject = {"items": [{"id": 1}, {"id": "b"}]}
    after: JsonObject = {"items": [{"id": True}, {"id": "b"}]}

    patch = make_patch(before, after)

    assert patch == [{"op": "replace", "path": "/items/0/id", "value": True}]
    assert canonical_json(apply_patch(before, patch)) == canonical_json(after)


@pytest.mark.parametrize("count", [5, LONG])
@pytest.mark.parametrize(
    ("member", "old", "new"),
    [
        ("limit", 1, True),
        ("limit", 1, 1.0),
        ("stacked", True, 1),
        ("opacity", 0.0, -0.0),
        ("settings", {"a": 1}, {"a": True}),
        ("settings", [0], [False]),
    ],
)
def test_values_python_calls_equal_differ_in_a_list_of_any_length(
    count: int, member: str, old: Any, new: Any
) -> None:
    before, after = numbered(count), numbered(count)
    index = count - 2
    items_of(before)[index][member] = old
    items_of(after)[index][member] = new

    patch = make_patch(before, after)

    assert patch
    assert all(
        str(operation["path"]).startswith(f"/widgets/{index}/{member}") for operation in patch
    )
    assert canonical_json(apply_patch(before, patch)) == canonical_json(after)


def test_changes_all_over_a_long_list_are_each_found() -> None:
    before, after = numbered(LONG), numbered(LONG)
    changed = [0, 1, 2, 17, 40, 41, 150, LONG - 1]
    for index in changed:
        items_of(after)[index]["x"] = 1

    patch = make_patch(before, after)

    assert patch == [
        {"op": "replace", "path": f"/widgets/{index}/x", "value": 1} for index in changed
    ]


def test_key_order_alone_is_no_change_in_a_long_list() -> None:
    before = numbered(LONG)
    after: JsonObject = {"widgets": [dict(reversed(item.items())) for item in items_of(before)]}

    assert make_patch(before, after) == []


def test_integers_beyond_64_bits_in_a_long_list_are_still_compared_exactly() -> None:
    big: list[JsonValue] = [2**70] * LONG
    before: JsonObject = {"big": big}
    after: JsonObject = {"big": [*big[:-1], 2**70 + 1]}
    appended: JsonObject = {"big": [*big, 1]}

    assert make_patch(before, after) == [
        {"op": "replace", "path": f"/big/{LONG - 1}", "value": 2**70 + 1}
    ]
    assert make_patch(before, appended) == [{"op": "add", "path": f"/big/{LONG}", "value": 1}]
