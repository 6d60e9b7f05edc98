"""RFC 6902 JSON Patch: compute the patch between two documents, and apply one.

`make_patch` diffs lists whose items are all objects with unique ``"id"`` members by
identity: an inserted, removed or moved widget is one operation, and a changed widget gets
operations inside it (``/widgets/3/title``). Other lists are diffed by position, objects
member by member. Values are compared as JSON sees them, so ``1``, ``1.0`` and ``true``
all differ.

`apply_patch` copies the document once (an orjson round trip) and applies the operations
to the copy with the ``jsonpatch`` library; every failure becomes a `PatchError` that
names the operation's index and path, never a value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import compress, count
from operator import is_, is_not, itemgetter, ne
from typing import Any, Final, cast

import jsonpatch
import jsonpointer
import orjson

from dashpersist._sequences import longest_increasing_run
from dashpersist.errors import PatchError
from dashpersist.types import JsonObject, JsonPatch, JsonValue

__all__ = ["apply_patch", "apply_patch_to_value", "make_patch"]

_ItemId = str | int | float | bool | None
_get_id: Callable[[Any], _ItemId] = itemgetter("id")
_MISSING: Any = object()
_CHUNK: Final = 16
"""How many items of a long array `_differing` encodes in one call while they match."""
_CHUNKED_FROM: Final = 8 * _CHUNK
"""The length from which chunks pay: below it, a chunk with a change is likely."""
_SCAN_CHUNK: Final = 8
"""The most items `_first_difference` encodes in one call: the chunk holding the
difference is encoded twice, so it pays to keep it smaller than `_CHUNK`."""


def make_patch(before: JsonValue, after: JsonValue) -> JsonPatch:
    """Return the RFC 6902 patch that turns *before* into *after*.

    Applying the operations in order to *before* gives a document equal to *after*,
    types included. Neither input is changed; the ``value`` members of the patch are
    *after*'s own objects, not copies, so serialize or copy the patch before changing
    *after*. Both inputs must be JSON: NaN and infinity are not.
    """
    operations: JsonPatch = []
    _diff(before, after, "", operations)
    return operations


def apply_patch(doc: JsonObject, patch: JsonPatch) -> JsonObject:
    """Return a copy of the JSON object *doc* with *patch* applied; *doc* is unchanged.

    Raises `PatchError` when the patch is malformed or an operation does not apply (a
    missing path, an index out of range, a failed ``test``), or when it would replace
    the object by another kind of value (`apply_patch_to_value` allows that).
    """
    result = apply_patch_to_value(doc, patch)
    if type(result) is not dict:
        raise PatchError(
            f"the patch replaces the document object with {_kind(result)}; "
            "use apply_patch_to_value to allow that"
        )
    return result


def apply_patch_to_value(doc: JsonValue, patch: JsonPatch) -> JsonValue:
    """Return a copy of any JSON value *doc* with *patch* applied; *doc* is unchanged.

    Raises `PatchError` like `apply_patch`; the result may be any JSON value.
    """
    if type(patch) is not list:
        raise PatchError(f"a patch is a list of operations, not {_kind(patch)}")
    result = _copy(doc)
    for index, operation in enumerate(patch):
        result = _apply_operation(result, operation, index)
    return result


# --- diff -------------------------------------------------------------------------------


def _diff(before: JsonValue, after: JsonValue, path: str, operations: JsonPatch) -> None:
    """Append the operations that turn *before* into *after*, both at *path*."""
    if before is after:
        return
    if type(before) is dict and type(after) is dict:
        _diff_objects(before, after, path, operations)
    elif type(before) is list and type(after) is list:
        _diff_arrays(before, after, path, operations)
    elif type(before) is not type(after) or not _scalars_equal(before, after):
        operations.append({"op": "replace", "path": path, "value": after})


def _diff_objects(before: JsonObject, after: JsonObject, path: str, operations: JsonPatch) -> None:
    """Diff two objects member by member: removals and changes in *before*'s order, then additions.

    This is the hot path of a changed widget, so the common members are settled inline:
    Python's ``==`` is exact between two values of one scalar type, but for the sign of
    a float zero.
    """
    removed_any = False
    for key, old in before.items():
        new = after.get(key, _MISSING)
        if old is new:  # also the same True, None or small integer
            continue
        kind = type(old)
        if kind is not type(new):
            if new is _MISSING:
                operations.append({"op": "remove", "path": _member_path(path, key)})
                removed_any = True
            else:
                operations.append({"op": "replace", "path": _member_path(path, key), "value": new})
        elif kind is str or kind is int or kind is bool or kind is float:
            if old != new or (kind is float and old == 0.0 and not _scalars_equal(old, new)):
                operations.append({"op": "replace", "path": _member_path(path, key), "value": new})
        elif type(old) is dict and type(new) is dict:
            # == first: it is cheaper than encoding, and settles a changed object.
            if old != new or _encode(old) != _encode(new):
                _diff_objects(old, new, _member_path(path, key), operations)
        else:
            _diff(old, new, _member_path(path, key), operations)
    if removed_any or len(after) != len(before):
        _add_new_members(before, after, path, operations)


def _add_new_members(
    before: JsonObject, after: JsonObject, path: str, operations: JsonPatch
) -> None:
    """Add the members of *after* that *before* lacks, in *after*'s order."""
    for key, new in after.items():
        if key not in before:
            operations.append({"op": "add", "path": _member_path(path, key), "value": new})


def _diff_arrays(
    before: list[JsonValue], after: list[JsonValue], path: str, operations: JsonPatch
) -> None:
    """Diff two arrays: by ``"id"`` when every item of both is an object with a unique
    one, and by position otherwise, or when each item kept its place.

    One item inserted or removed, and nothing else changed, is settled first and
    without the ids: either way the diff is that one operation.
    """
    if len(after) - len(before) in {1, -1}:
        index = _single_insertion_or_removal(before, after)
        if index is not None:
            if len(after) > len(before):
                operations.append({"op": "add", "path": f"{path}/{index}", "value": after[index]})
            else:
                operations.append({"op": "remove", "path": f"{path}/{index}"})
            return
    differing = _differing(before, after) if len(before) == len(after) else None
    if differing is None or _some_id_differs(before, after, differing):
        before_ids = _unique_ids(before)
        after_ids = _unique_ids(after) if before_ids is not None else None
        if before_ids is not None and after_ids is not None:
            _diff_by_id(before, after, path, operations, before_ids=before_ids, after_ids=after_ids)
            return
    if differing is None:
        _diff_by_position(before, after, path, operations)
        return
    # Each item kept its place (and its id, if it has one), or not all have unique ids.
    for index in differing:
        _diff(before[index], after[index], f"{path}/{index}", operations)


def _diff_by_position(
    before: list[JsonValue], after: list[JsonValue], path: str, operations: JsonPatch
) -> None:
    # Trimming the common ends turns one insertion or removal anywhere into one operation.
    shortest = min(len(before), len(after))
    differing = _differing(before, after)
    start = differing[0] if differing else shortest
    differing_from_end = _differing(before[::-1], after[::-1])
    common_end = min(differing_from_end[0] if differing_from_end else shortest, shortest - start)
    end_before, end_after = len(before) - common_end, len(after) - common_end
    tail = min(end_before, end_after)
    for index in differing:
        if index >= tail:
            break
        _diff(before[index], after[index], f"{path}/{index}", operations)
    for _ in range(end_before - tail):
        operations.append({"op": "remove", "path": f"{path}/{tail}"})
    for index in range(tail, end_after):
        operations.append({"op": "add", "path": f"{path}/{index}", "value": after[index]})


def _diff_by_id(
    before: list[JsonValue],
    after: list[JsonValue],
    path: str,
    operations: JsonPatch,
    *,
    before_ids: list[_ItemId],
    after_ids: list[_ItemId],
) -> None:
    """Diff arrays of items with unique ids: removals, moves, insertions, then changes.

    The ids that match at the start and at the end of both arrays keep their place, so
    only the middle between them is aligned: one insertion, removal or move costs work
    in proportion to that middle, not to the array.
    """
    start = _common_prefix_length(before_ids, after_ids)
    common_end = min(
        _common_prefix_length(before_ids[::-1], after_ids[::-1]),
        min(len(before), len(after)) - start,
    )
    stop_before, stop_after = len(before) - common_end, len(after) - common_end
    kept_before, kept_after = _restructure_middle(
        before_ids[start:stop_before],
        after_ids[start:stop_after],
        after,
        path,
        operations,
        offset=start,
    )
    # The array now holds after's items in after's order, with before's contents.
    old_items = [*before[:start], *map(before.__getitem__, kept_before), *before[stop_before:]]
    new_items = [*after[:start], *map(after.__getitem__, kept_after), *after[stop_after:]]
    middle_end = start + len(kept_after)
    for position in _differing(old_items, new_items):
        if position < start:
            index = position
        elif position < middle_end:
            index = kept_after[position - start]
        else:  # in the common end
            index = position + len(after) - len(new_items)
        _diff(old_items[position], new_items[position], f"{path}/{index}", operations)


def _restructure_middle(
    before_ids: list[_ItemId],
    after_ids: list[_ItemId],
    after: list[JsonValue],
    path: str,
    operations: JsonPatch,
    *,
    offset: int,
) -> tuple[list[int], list[int]]:
    """Emit the removals, moves and insertions that turn the middle *before_ids* into the
    middle *after_ids*, both starting at index *offset* of the array.

    Return the indices of the items kept, in after's order: in before, and in after.
    """
    index_before = {item_id: index for index, item_id in enumerate(before_ids, offset)}
    index_after = {item_id: index for index, item_id in enumerate(after_ids, offset)}
    removed = [index for item_id, index in index_before.items() if item_id not in index_after]
    added = [index for item_id, index in index_after.items() if item_id not in index_before]
    # Removals run from the highest index down, so that every index the patch names is
    # still valid when its operation runs: RFC 6902 applies operations in order.
    for index in reversed(removed):
        operations.append({"op": "remove", "path": f"{path}/{index}"})
    current = [item_id for item_id in index_before if item_id in index_after]
    kept = [item_id for item_id in index_after if item_id in index_before]
    if current != kept:
        _reorder(current, kept, path, operations, offset=offset)
    # Inserting in ascending index order leaves every earlier item where it belongs.
    for index in added:
        operations.append({"op": "add", "path": f"{path}/{index}", "value": after[index]})
    return [index_before[item_id] for item_id in kept], [index_after[item_id] for item_id in kept]


def _reorder(
    current: list[_ItemId],
    target: list[_ItemId],
    path: str,
    operations: JsonPatch,
    *,
    offset: int,
) -> None:
    """Emit moves turning *current* into *target* (the same ids), updating *current*.

    *offset* is the index in the array of the first item of *current*. The items of a
    longest increasing subsequence stay put; every other item moves once, to just after
    its predecessor in *target*, which yields *target* when done in order.
    """
    position = {item_id: index for index, item_id in enumerate(target)}
    stays = longest_increasing_run([position[item_id] for item_id in current])
    for index, item_id in enumerate(target):
        if index in stays:
            continue
        predecessor = current.index(target[index - 1]) if index else -1
        source = current.index(item_id)
        if source == predecessor + 1:
            continue
        # "move" removes first: an item taken from before its predecessor shifts it left.
        destination = predecessor + 1 if source > predecessor else predecessor
        operations.append(
            {
                "op": "move",
                "from": f"{path}/{offset + source}",
                "path": f"{path}/{offset + destination}",
            }
        )
        current.insert(destination, current.pop(source))


def _some_id_differs(before: list[JsonValue], after: list[JsonValue], indices: list[int]) -> bool:
    """Tell whether, at one of *indices*, both items are objects with an ``"id"``, and
    these differ as JSON values."""
    for index in indices:
        old, new = before[index], after[index]
        if type(old) is dict and type(new) is dict:
            old_id, new_id = old.get("id", _MISSING), new.get("id", _MISSING)
            if old_id is _MISSING or new_id is _MISSING:
                continue
            if type(old_id) is not type(new_id) or old_id != new_id:
                return True
    return False


def _unique_ids(items: list[JsonValue]) -> list[_ItemId] | None:
    """Return each item's ``"id"``; ``None`` unless every item is an object with one,
    and no two share one (ids compare as in Python: ``1`` and ``true`` are one id)."""
    if items and type(items[0]) is not dict:
        return None  # a list of scalars or arrays, found without raising
    try:
        ids = list(map(_get_id, items))
        unique = len(set(ids)) == len(ids)
    except (KeyError, TypeError):  # an item without "id" or not an object; an unhashable id
        return None
    return ids if unique else None


def _common_prefix_length(before: list[_ItemId], after: list[_ItemId]) -> int:
    """Return how many leading ids *before* and *after* share (compared at C speed)."""
    first_difference = compress(count(), map(ne, before, after))
    return next(first_difference, min(len(before), len(after)))


def _single_insertion_or_removal(before: list[JsonValue], after: list[JsonValue]) -> int | None:
    """Return the index at which one item was inserted into or removed from *before* to
    give *after* (their lengths differ by one), or ``None`` if that is not all that changed.

    The usual structural edit, and the one worth a shortcut: the items before the first
    difference match, and so do all those after it, once shifted by one.
    """
    try:
        index = _first_difference(before, after)
        if len(after) > len(before):
            rest_before, rest_after = before[index:], after[index + 1 :]
        else:
            rest_before, rest_after = before[index + 1 :], after[index:]
        if all(map(is_, rest_before, rest_after)):  # shared items (see `_differing`)
            return index
        return index if orjson.dumps(rest_before) == orjson.dumps(rest_after) else None
    except orjson.JSONEncodeError:  # an integer beyond 64 bits: leave it to the full diff
        return None


def _first_difference(before: list[JsonValue], after: list[JsonValue]) -> int:
    """Return the index of the first item whose encoding differs, or the shorter length.

    Like `_differing`, it encodes the items a chunk at a time, and a chunk that differs
    item by item. The chunks start at one item and double up to `_SCAN_CHUNK`, so that
    a difference near the start is found for little more than its own cost.
    """
    dumps = orjson.dumps
    end = min(len(before), len(after))
    # Leading items that are the same objects are equal (see `_differing`).
    start, size = next(compress(count(), map(is_not, before, after)), end), 1
    while start < end:
        stop = min(start + size, end)
        old_items, new_items = before[start:stop], after[start:stop]
        if dumps(old_items) != dumps(new_items):
            changes = map(ne, map(dumps, old_items), map(dumps, new_items))
            return next(compress(count(start), changes))
        start, size = stop, min(2 * size, _SCAN_CHUNK)
    return end


def _differing(before: list[JsonValue], after: list[JsonValue]) -> list[int]:
    """Return the indices, up to the shorter length, where the items may differ as JSON.

    Items are compared by their orjson encoding, which is exact about types (``1``,
    ``1.0`` and ``true`` differ, as do ``0.0`` and ``-0.0``, where Python's ``==`` calls
    them equal) and several times faster than comparing in Python. Items that are equal
    as JSON but encode differently (another key order) are listed too: diffing them then
    finds no change.

    An item that is the same object in both is equal without a look: the validator hands
    every save the same copy of an unchanged widget, so a save's diff against the one
    before encodes only the widgets that changed.
    """
    end = min(len(before), len(after))
    suspects = list(compress(range(end), map(is_not, before, after)))
    try:
        if len(suspects) == end:
            return _differing_encodings(before, after)
        dumps = orjson.dumps
        return [index for index in suspects if dumps(before[index]) != dumps(after[index])]
    except orjson.JSONEncodeError:
        return [index for index in suspects if _encode(before[index]) != _encode(after[index])]


def _differing_encodings(before: list[JsonValue], after: list[JsonValue]) -> list[int]:
    """Return the indices where the orjson encodings of the items differ.

    Each call costs a new buffer and a new bytes object, much of the cost of encoding a
    small item, so a long array is encoded `_CHUNK` items at a time, and only a chunk
    that differs is encoded item by item. After such a chunk the next one goes item by
    item straight away, so an array with changes all over still costs about one
    encoding per item.
    """
    dumps = orjson.dumps
    end = min(len(before), len(after))
    if end < _CHUNKED_FROM:
        return list(compress(count(), map(ne, map(dumps, before), map(dumps, after))))
    differing: list[int] = []
    item_by_item = False
    for start in range(0, end, _CHUNK):
        stop = min(start + _CHUNK, end)
        old_items, new_items = before[start:stop], after[start:stop]
        if item_by_item or dumps(old_items) != dumps(new_items):
            changes = map(ne, map(dumps, old_items), map(dumps, new_items))
            found = list(compress(range(start, stop), changes))
            differing += found
            item_by_item = bool(found)
    return differing


def _encode(value: JsonValue) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        # Integers beyond 64 bits are JSON but not orjson's. repr() tells types apart too,
        # and the NUL prefix keeps it from ever matching orjson's output.
        return b"\0" + repr(value).encode("utf-8", "backslashreplace")


def _scalars_equal(before: JsonValue, after: JsonValue) -> bool:
    """Compare two scalars of the same type; 0.0 and -0.0 differ, as their JSON does."""
    if before != after:
        return False
    return type(before) is not float or math.copysign(1.0, before) == math.copysign(
        1.0, cast(float, after)
    )


def _member_path(path: str, key: str) -> str:
    """Return the JSON Pointer of member *key* of the object at *path*."""
    if "~" in key or "/" in key:
        # RFC 6901, section 3: "~" must be escaped first, or "/" -> "~1" -> "~01".
        key = key.replace("~", "~0").replace("/", "~1")
    return f"{path}/{key}"


# --- apply ------------------------------------------------------------------------------

_OPERATIONS: dict[str, Any] = {
    "add": jsonpatch.AddOperation,
    "remove": jsonpatch.RemoveOperation,
    "replace": jsonpatch.ReplaceOperation,
    "move": jsonpatch.MoveOperation,
    "copy": jsonpatch.CopyOperation,
    "test": jsonpatch.TestOperation,
}
_NEEDS_VALUE = frozenset({"add", "replace", "test"})
_NEEDS_FROM = frozenset({"move", "copy"})

# Fixed reasons rather than jsonpatch's messages, which can quote document values.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jsonpatch.JsonPatchTestFailed, "the tested value differs or is missing"),
    (jsonpatch.JsonPatchPathNotFound, "no such location in the document"),
    (jsonpatch.JsonPatchConflict, "does not fit the document (missing parent or bad index)"),
    (jsonpatch.InvalidJsonPatch, "malformed operation"),
    (jsonpointer.JsonPointerException, "the path does not resolve in the document"),
)


def _apply_operation(doc: JsonValue, operation: object, index: int) -> JsonValue:
    if type(operation) is not dict:
        raise PatchError(f"patch operation {index} is {_kind(operation)}, not an object")
    name = operation.get("op")
    path = operation.get("path")
    if type(name) is not str or name not in _OPERATIONS:
        where = f" at {path!r}" if type(path) is str else ""
        raise PatchError(f"patch operation {index}{where}: unknown or missing 'op'")
    if type(path) is not str:
        raise PatchError(f"patch operation {index} ({name}): 'path' must be a string")
    where = f"patch operation {index} ({name} at {path!r})"
    if name in _NEEDS_VALUE and "value" not in operation:
        raise PatchError(f"{where}: missing 'value'")
    if name in _NEEDS_FROM:
        source = operation.get("from")
        if type(source) is not str:
            raise PatchError(f"{where}: 'from' must be a string")
        where = f"patch operation {index} ({name} from {source!r} to {path!r})"
    try:
        return cast(JsonValue, _OPERATIONS[name](operation).apply(doc))
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        reason = next(text for kind, text in _REASONS if isinstance(exc, kind))
        # "from None": the library's message can quote a document value, and a chained
        # cause would carry it into logged tracebacks.
        raise PatchError(f"{where}: {reason}") from None


def _copy(value: JsonValue) -> JsonValue:
    # An orjson round trip copies several times faster than copy.deepcopy.
    try:
        return cast(JsonValue, orjson.loads(orjson.dumps(value)))
    except orjson.JSONEncodeError as exc:
        raise PatchError(f"the document is not JSON that can be copied: {exc}") from exc


def _kind(value: object) -> str:
    """Name the JSON type of *value* with its article ("an array"), never the value itself."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else f"a {type(value).__name__} (not JSON)"
