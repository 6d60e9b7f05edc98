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
from itertools import compress, count, filterfalse
from operator import itemgetter, ne
from typing import Any, TypeVar, cast

import jsonpatch
import jsonpointer
import orjson

from dashpersist._sequences import longest_increasing_run
from dashpersist.errors import PatchError
from dashpersist.types import JsonObject, JsonPatch, JsonValue

__all__ = ["apply_patch", "apply_patch_to_value", "make_patch"]

_ItemId = str | int | float | bool | None
_get_id: Callable[[Any], _ItemId] = itemgetter("id")
_T = TypeVar("_T")
_MISSING: Any = object()


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
    if before is after:
        return
    kind = type(before)
    if kind is not type(after):
        operations.append({"op": "replace", "path": path, "value": after})
    elif kind is dict:
        _diff_objects(cast(JsonObject, before), cast(JsonObject, after), path, operations)
    elif kind is list:
        _diff_arrays(cast(list[JsonValue], before), cast(list[JsonValue], after), path, operations)
    elif not _scalars_equal(before, after):
        operations.append({"op": "replace", "path": path, "value": after})


def _diff_objects(before: JsonObject, after: JsonObject, path: str, operations: JsonPatch) -> None:
    # Hot path (a changed widget): scalars are compared inline, without a call per member.
    removed_any = False
    for key, old in before.items():
        new = after.get(key, _MISSING)
        if new is _MISSING:
            operations.append({"op": "remove", "path": f"{path}/{_escape(key)}"})
            removed_any = True
            continue
        kind = type(old)
        # An array compares its items itself; == first would walk a long one twice.
        if kind is type(new) and kind is not list and old == new:
            # Python's == calls 1, 1.0 and True equal, but within one type it is exact,
            # except for the sign of a float zero and for anything nested in an object.
            if kind is float:
                if _scalars_equal(old, new):
                    continue
            elif kind is not dict or _encode(old) == _encode(new):
                continue
        _diff(old, new, f"{path}/{_escape(key)}", operations)
    if removed_any or len(after) != len(before):
        for key, new in after.items():
            if key not in before:
                operations.append({"op": "add", "path": f"{path}/{_escape(key)}", "value": new})


def _diff_arrays(
    before: list[JsonValue], after: list[JsonValue], path: str, operations: JsonPatch
) -> None:
    differing = _differing(before, after) if len(before) == len(after) else None
    if differing is not None and not any(_ids_differ(before[i], after[i]) for i in differing):
        # Each item kept its place (and its id, if it has one): compare them pairwise.
        for index in differing:
            _diff(before[index], after[index], f"{path}/{index}", operations)
        return
    index_before = _index_by_id(before)
    index_after = _index_by_id(after) if index_before is not None else None
    if index_before is not None and index_after is not None:
        _diff_by_id(
            before, after, path, operations, index_before=index_before, index_after=index_after
        )
    elif differing is not None:
        for index in differing:
            _diff(before[index], after[index], f"{path}/{index}", operations)
    else:
        _diff_by_position(before, after, path, operations)


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
    index_before: dict[_ItemId, int],
    index_after: dict[_ItemId, int],
) -> None:
    removed_ids = filterfalse(index_after.__contains__, index_before)
    added_ids = filterfalse(index_before.__contains__, index_after)
    removed = sorted(index_before[item_id] for item_id in removed_ids)
    added = sorted(index_after[item_id] for item_id in added_ids)
    # Removals run from the highest index down, so that every index the patch names is
    # still valid when its operation runs: RFC 6902 applies operations in order.
    for index in reversed(removed):
        operations.append({"op": "remove", "path": f"{path}/{index}"})
    current = _without(list(index_before), removed)
    kept = _without(list(index_after), added)
    new_items = _without(after, added)
    if current == kept:
        old_items = _without(before, removed)
    else:
        _reorder(current, kept, path, operations)
        old_items = [before[index_before[item_id]] for item_id in kept]
    # Inserting in ascending index order leaves every earlier item where it belongs.
    for index in added:
        operations.append({"op": "add", "path": f"{path}/{index}", "value": after[index]})
    # The array now holds after's items in after's order, with before's contents.
    for position in _differing(old_items, new_items):
        index = index_after[kept[position]]
        _diff(old_items[position], new_items[position], f"{path}/{index}", operations)


def _reorder(
    current: list[_ItemId], target: list[_ItemId], path: str, operations: JsonPatch
) -> None:
    """Emit moves turning *current* into *target* (the same ids), updating *current*.

    The items of a longest increasing subsequence stay put; every other item moves once,
    to just after its predecessor in *target*, which yields *target* when done in order.
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
            {"op": "move", "from": f"{path}/{source}", "path": f"{path}/{destination}"}
        )
        current.insert(destination, current.pop(source))


def _index_by_id(items: list[JsonValue]) -> dict[_ItemId, int] | None:
    """Map each item's ``"id"`` to its index; ``None`` unless all are objects with unique ids."""
    try:
        index = dict(zip(map(_get_id, items), range(len(items)), strict=True))
    except (KeyError, TypeError):  # an item without "id", not an object, or an unhashable id
        return None
    return index if len(index) == len(items) else None


def _ids_differ(before: JsonValue, after: JsonValue) -> bool:
    if type(before) is not dict or type(after) is not dict:
        return False
    if "id" not in before or "id" not in after:
        return False
    old, new = before["id"], after["id"]
    return type(old) is not type(new) or old != new


def _without(items: list[_T], indices: list[int]) -> list[_T]:
    """Return *items* without the ones at the ascending *indices* (slices: C speed)."""
    if not indices:
        return items
    kept: list[_T] = []
    start = 0
    for index in indices:
        kept += items[start:index]
        start = index + 1
    kept += items[start:]
    return kept


def _differing(before: list[JsonValue], after: list[JsonValue]) -> list[int]:
    """Return the indices, up to the shorter length, where the items may differ as JSON.

    Items that are equal as JSON but encode differently (another key order) are listed
    too: diffing them then finds no change. orjson does most of the work, which is several
    times faster than comparing in Python, and tells ``1``, ``1.0`` and ``true`` apart
    where Python's ``==`` does not.
    """
    try:
        encoded = map(ne, map(orjson.dumps, before), map(orjson.dumps, after))
        return list(compress(count(), encoded))
    except orjson.JSONEncodeError:
        pairs = zip(before, after, strict=False)
        return [index for index, (old, new) in enumerate(pairs) if _encode(old) != _encode(new)]


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


def _escape(key: str) -> str:
    # RFC 6901, section 3: "~" must be escaped first, or "/" -> "~1" -> "~01".
    return key.replace("~", "~0").replace("/", "~1")


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
