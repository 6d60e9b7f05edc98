"""The one canonical JSON encoding every backend, checksum, outbox and AAD uses.

Canonical bytes are UTF-8 JSON with sorted keys and no whitespace. NaN and the
infinities are refused (JSON cannot hold them, and orjson would quietly write ``null``),
as are non-string keys, lone surrogates and integers beyond 64 bits.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import cast

import orjson

from dashpersist.errors import CorruptStoreError, ValidationError, ValidationIssue
from dashpersist.types import JsonObject, JsonValue

__all__ = [
    "canonical_json",
    "checksum",
    "checksum_bytes",
    "copy_json",
    "has_non_finite",
    "parse_json",
]

_OPTIONS = orjson.OPT_SORT_KEYS


def has_non_finite(node: JsonValue) -> bool:
    """Whether *node* holds a NaN or an infinity, which orjson would write as null."""
    # Hot path (explicit loops: several times faster than any() over a generator).
    # Recursion is safe: orjson has already refused anything nested deeper than 255 levels.
    children: Iterable[JsonValue]
    if type(node) is dict:
        children = node.values()
    elif type(node) is list:
        children = node
    else:
        return type(node) is float and not math.isfinite(node)
    for child in children:
        kind = type(child)
        if kind is float and not math.isfinite(child):  # type: ignore[arg-type]
            return True
        if (kind is dict or kind is list) and has_non_finite(child):
            return True
    return False


def _path_of_non_finite(node: JsonValue, path: str = "$") -> str:
    if isinstance(node, dict):
        for key, child in node.items():
            if has_non_finite(child):
                return _path_of_non_finite(child, f"{path}.{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            if has_non_finite(child):
                return _path_of_non_finite(child, f"{path}[{index}]")
    return path


def canonical_json(value: JsonValue) -> bytes:
    """Return the canonical bytes of *value*; raise `ValidationError` if JSON can't hold it."""
    try:
        encoded = orjson.dumps(value, option=_OPTIONS)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise ValidationError(
            [
                ValidationIssue(
                    "$", "json_encodable", f"not representable as JSON: {type(exc).__name__}"
                )
            ]
        ) from exc
    # orjson writes NaN and infinities as null; refuse them instead of changing the data.
    # Only a document holding "null" can have had one, which keeps the walk off most saves.
    if b"null" in encoded and has_non_finite(value):
        path = _path_of_non_finite(value)
        raise ValidationError([ValidationIssue(path, "finite_number", "NaN or infinity")])
    return encoded


def checksum_bytes(encoded: bytes) -> str:
    """Return the hex SHA-256 of canonical bytes."""
    return hashlib.sha256(encoded).hexdigest()


def checksum(value: JsonValue) -> str:
    """Return the hex SHA-256 of the canonical JSON of *value* (key order never matters)."""
    return checksum_bytes(canonical_json(value))


def parse_json(encoded: bytes | str, *, source: str = "document") -> JsonValue:
    """Parse stored JSON; raise `CorruptStoreError` naming *source* when it is not JSON."""
    try:
        return cast(JsonValue, orjson.loads(encoded))
    except orjson.JSONDecodeError as exc:
        raise CorruptStoreError(f"{source} is not valid JSON: {exc.msg} at {exc.pos}") from exc


def copy_json(value: JsonObject) -> JsonObject:
    """Return a deep copy of a JSON object (an orjson round trip: 10x faster than deepcopy)."""
    return cast(JsonObject, orjson.loads(orjson.dumps(value)))
