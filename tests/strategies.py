"""Hypothesis strategies for JSON documents and dashboard layouts."""

from __future__ import annotations

import copy
from typing import cast

from hypothesis import strategies as st

from dashpersist.types import JsonObject, JsonValue

# JSON can't hold NaN or infinity, and integers stay JavaScript-safe.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
)
json_keys = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
json_values: st.SearchStrategy[JsonValue] = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(json_keys, children, max_size=5)
    ),
    max_leaves=25,
)
json_objects: st.SearchStrategy[JsonObject] = st.dictionaries(json_keys, json_values, max_size=6)

widget_ids = st.sampled_from([f"w{i}" for i in range(12)])


@st.composite
def widgets(draw: st.DrawFn, widget_id: str) -> JsonObject:
    """Return one widget dict with the given id."""
    return {
        "id": widget_id,
        "type": draw(st.sampled_from(["chart", "table", "metric", "text"])),
        "title": draw(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)),
        "x": draw(st.integers(0, 8)),
        "y": draw(st.integers(0, 20)),
        "w": draw(st.integers(1, 4)),
        "h": draw(st.integers(1, 4)),
        "settings": draw(
            st.dictionaries(
                st.sampled_from(["color", "metric", "limit", "api_key"]), json_scalars, max_size=3
            )
        ),
    }


@st.composite
def layouts(draw: st.DrawFn) -> JsonObject:
    """Return a layout dict: unique widget ids in a random order, plus dashboard state."""
    ids = draw(st.lists(widget_ids, unique=True, max_size=8))
    return {
        "widgets": [draw(widgets(widget_id)) for widget_id in ids],
        "theme": draw(st.sampled_from(["light", "dark"])),
        "filters": draw(
            st.dictionaries(
                st.sampled_from(["region", "year", "team"]), st.text(max_size=5), max_size=3
            )
        ),
    }


# --- edits of a layout, for the merge laws (tests/properties/test_merge_laws.py) ---------

EDIT_KINDS = (
    "move",
    "resize",
    "retitle",
    "settings",
    "insert",
    "delete",
    "reorder",
    "theme",
    "filters",
)
"""What `layout_edits` may do to a layout."""


@st.composite
def layout_edits(
    draw: st.DrawFn,
    base: JsonObject,
    *,
    widget_ids: frozenset[str] | None = None,
    new_ids: tuple[str, ...] = ("n1", "n2", "n3"),
    kinds: tuple[str, ...] = EDIT_KINDS,
    max_edits: int = 6,
) -> JsonObject:
    """Return a copy of *base* after a few edits a user makes on one device.

    Only widgets in *widget_ids* (default: all) are moved, resized, retitled, given new
    settings, reordered or deleted; inserted widgets take unused ids from *new_ids*. Two
    calls with the same *new_ids* may add the same id with different contents.
    """
    edited = copy.deepcopy(base)
    items = cast(list[JsonObject], edited["widgets"])
    filters = cast(JsonObject, edited["filters"])
    for _ in range(draw(st.integers(0, max_edits))):
        kind = draw(st.sampled_from(kinds))
        editable = [item for item in items if widget_ids is None or item["id"] in widget_ids]
        if kind == "theme":
            edited["theme"] = draw(st.sampled_from(["light", "dark", "solar"]))
        elif kind == "filters":
            name = draw(st.sampled_from(["region", "year", "team"]))
            if draw(st.booleans()):
                filters[name] = draw(st.text(max_size=5))
            else:
                filters.pop(name, None)
        elif kind == "insert":
            unused = [new_id for new_id in new_ids if all(item["id"] != new_id for item in items)]
            if unused:
                new = draw(widgets(draw(st.sampled_from(unused))))
                items.insert(draw(st.integers(0, len(items))), new)
        elif editable:
            _edit_widget(draw, kind, draw(st.sampled_from(editable)), items)
    return edited


def _edit_widget(draw: st.DrawFn, kind: str, widget: JsonObject, items: list[JsonObject]) -> None:
    settings = cast(JsonObject, widget["settings"])
    if kind == "move":
        widget["x"], widget["y"] = draw(st.integers(0, 8)), draw(st.integers(0, 20))
    elif kind == "resize":
        widget["w"], widget["h"] = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    elif kind == "retitle":
        widget["title"] = draw(st.sampled_from(["Sales", "Costs", "Users", ""]))
    elif kind == "settings":
        name = draw(st.sampled_from(["color", "metric", "limit"]))
        if draw(st.booleans()):
            settings[name] = draw(json_scalars)
        else:
            settings.pop(name, None)
    elif kind == "delete":
        items.remove(widget)
    elif kind == "reorder":
        items.remove(widget)
        items.insert(draw(st.integers(0, len(items))), widget)


# Hostile input for validation fuzzing: everything a JSON-like Python value can hold that
# JSON or the limits refuse (NaN, infinities, huge integers, non-string keys, lone
# surrogates, control characters, polluting or ownership keys, non-JSON types).
hostile_scalars = (
    json_scalars
    | st.floats()
    | st.integers()
    | st.sampled_from([2**53, -(2**53), 2**64, 10**30, float("nan"), float("-inf"), 1e308])
    | st.text(max_size=12)
    | st.sampled_from(["\ud800", "\x00", "a\x1bb", "\u202e", "<script>x</script>", "x" * 300])
    | st.binary(max_size=4)
    | st.tuples(st.integers(), st.booleans())
)
hostile_keys = (
    json_keys
    | st.text(max_size=6)
    | st.integers(-3, 3)
    | st.sampled_from(["__proto__", "constructor", "prototype", "user_id", "version", "tenant"])
    | st.none()
)
hostile_values: st.SearchStrategy[object] = st.recursive(
    hostile_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(hostile_keys, children, max_size=5)
    ),
    max_leaves=30,
)


@st.composite
def hostile_layouts(draw: st.DrawFn) -> dict[object, object]:
    """Return a layout-shaped dict with hostile values mixed into valid structure."""
    doc: dict[object, object] = {}
    doc.update(draw(layouts()))
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["top", "widget", "settings"]))
        key = draw(hostile_keys)
        value = draw(hostile_values)
        widgets = doc.get("widgets")
        if where == "top" or not isinstance(widgets, list) or not widgets:
            doc[key] = value
            continue
        widget = dict(draw(st.sampled_from(widgets)))
        widgets[widgets.index(widget)] = widget
        if where == "widget":
            widget[key] = value
        else:
            widget["settings"] = {**widget["settings"], key: value}
    return doc


def nested_values(depth: int, *, kind: str) -> JsonValue:
    """Return *depth* nested arrays (``kind="array"``) or objects around the number 1."""
    value: JsonValue = 1
    for _ in range(depth):
        value = [value] if kind == "array" else {"a": value}
    return value


def _without_controls(value: JsonValue) -> JsonValue:
    if isinstance(value, str):
        return "".join(ch for ch in value if ch in "\t\n\r" or ord(ch) >= 0x20)
    if isinstance(value, list):
        return [_without_controls(item) for item in value]
    if isinstance(value, dict):
        return {_without_controls(k): _without_controls(v) for k, v in value.items()}  # type: ignore[misc]
    return value


def _layout_without_controls(doc: JsonObject) -> JsonObject:
    return cast(JsonObject, _without_controls(doc))


valid_layouts: st.SearchStrategy[JsonObject] = layouts().map(_layout_without_controls)
"""Layouts the default `Validator` accepts: `layouts` without C0 control characters."""
