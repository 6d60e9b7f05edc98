"""Names for JSON shapes and closed vocabularies, defined once."""

from __future__ import annotations

from typing import Literal, TypeAlias

from typing_extensions import TypeAliasType

__all__ = ["ChangeType", "JsonObject", "JsonPatch", "JsonValue", "SaveSource"]

# TypeAliasType (PEP 695's alias, backported) lets both mypy and pydantic follow the recursion.
JsonValue = TypeAliasType(
    "JsonValue", "dict[str, JsonValue] | list[JsonValue] | str | int | float | bool | None"
)
JsonObject: TypeAlias = dict[str, JsonValue]
JsonPatch: TypeAlias = list[JsonObject]
"""An RFC 6902 patch: a list of operation objects."""

ChangeType: TypeAlias = Literal[
    "manual", "auto", "rollback", "conflict_resolution", "sync", "migration"
]
"""Why a version was written."""

SaveSource: TypeAlias = Literal["storage", "outbox", "queued", "unchanged"]
"""Where a save ended up: committed, parked in the durable outbox, queued for autosave,
or not written because the document equals the stored one."""
