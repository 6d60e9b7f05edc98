"""Deep-frozen JSON containers, so documents handed out from the cache can be shared safely.

`FrozenDict` and `FrozenList` are subclasses of ``dict`` and ``list`` (``isinstance``
checks, orjson and pydantic serialization keep working) whose every mutating method
raises `TypeError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn, SupportsIndex

from dashpersist.types import JsonValue

__all__ = ["FrozenDict", "FrozenList", "freeze_json"]

_MESSAGE = "documents are immutable: build a changed copy (model_copy, with_changes, or a dict)"


def _refuse(*_: object, **__: object) -> NoReturn:
    raise TypeError(_MESSAGE)


class FrozenDict(dict[str, JsonValue]):
    """A JSON object that cannot be changed."""

    __slots__ = ()

    def __setitem__(self, key: str, value: JsonValue) -> NoReturn:
        _refuse()

    def __delitem__(self, key: str) -> NoReturn:
        _refuse()

    def __ior__(self, other: object) -> NoReturn:  # type: ignore[misc]
        _refuse()

    def clear(self) -> NoReturn:
        _refuse()

    def pop(self, *args: object) -> NoReturn:
        _refuse()

    def popitem(self) -> NoReturn:
        _refuse()

    def setdefault(self, *args: object) -> NoReturn:
        _refuse()

    def update(self, *args: object, **kwargs: object) -> NoReturn:
        _refuse()

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> FrozenDict:
        return self

    def __reduce__(self) -> tuple[type[FrozenDict], tuple[dict[str, JsonValue]]]:
        return (FrozenDict, (dict(self),))


class FrozenList(list[JsonValue]):
    """A JSON array that cannot be changed."""

    __slots__ = ()

    def __setitem__(self, index: SupportsIndex | slice, value: object) -> NoReturn:
        _refuse()

    def __delitem__(self, index: SupportsIndex | slice) -> NoReturn:
        _refuse()

    def __iadd__(self, other: Iterable[JsonValue]) -> NoReturn:  # type: ignore[misc,override]
        _refuse()

    def __imul__(self, count: SupportsIndex) -> NoReturn:
        _refuse()

    def append(self, value: JsonValue) -> NoReturn:
        _refuse()

    def extend(self, values: Iterable[JsonValue]) -> NoReturn:
        _refuse()

    def insert(self, index: SupportsIndex, value: JsonValue) -> NoReturn:
        _refuse()

    def pop(self, index: SupportsIndex = -1) -> NoReturn:
        _refuse()

    def remove(self, value: JsonValue) -> NoReturn:
        _refuse()

    def clear(self) -> NoReturn:
        _refuse()

    def sort(self, *args: object, **kwargs: object) -> NoReturn:
        _refuse()

    def reverse(self) -> NoReturn:
        _refuse()

    def __copy__(self) -> FrozenList:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> FrozenList:
        return self

    def __reduce__(self) -> tuple[type[FrozenList], tuple[list[JsonValue]]]:
        return (FrozenList, (list(self),))


_SCALARS = frozenset({str, int, float, bool, type(None)})


def freeze_json(value: JsonValue) -> JsonValue:
    """Return *value* with every object and array replaced by a frozen copy."""
    # Hot path on every load: scalars skip the recursive call, exact type checks skip
    # isinstance's subclass walk.
    kind = type(value)
    if kind is FrozenDict or kind is FrozenList:
        return value
    if kind is dict:
        return FrozenDict(
            {
                key: child if type(child) in _SCALARS else freeze_json(child)
                for key, child in value.items()  # type: ignore[union-attr]
            }
        )
    if kind is list:
        return FrozenList(
            [child if type(child) in _SCALARS else freeze_json(child) for child in value]  # type: ignore[union-attr]
        )
    return value
