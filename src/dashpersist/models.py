"""The documents dashpersist stores by default, and the values its API returns.

`Layout` and `Widget` check what a single document can check about itself: field types
(strictly: ``"3"`` is not an integer and ``true`` is not ``1``), the widget id alphabet,
grid sizes and positions, unique widget ids and that every widget fits the grid.
Document-wide limits (bytes, depth, string length, ...) and per-type widget settings are
the `dashpersist.validation.Validator`'s job, because they are configurable.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from dashpersist._frozen import FrozenDict, freeze_json
from dashpersist.types import ChangeType, JsonObject, JsonValue, SaveSource

if TYPE_CHECKING:
    from dashpersist.errors import DashPersistError

__all__ = [
    "ID_PATTERN",
    "FrozenJsonObject",
    "Layout",
    "SaveResult",
    "StoredLayoutInfo",
    "SyncResult",
    "VersionInfo",
    "Versioned",
    "Widget",
    "WidgetId",
    "WidgetType",
]

ID_PATTERN = r"^[A-Za-z0-9_](?:[A-Za-z0-9_.@-]{0,126}[A-Za-z0-9_@-])?$"
"""Widget ids: 1 to 128 ASCII letters, digits and ``_ . @ -``; no leading or trailing dot,
so an id is never ``.``/``..``, a path or a Windows-hostile name ending in a dot."""

WidgetId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
WidgetType = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")]

_MODEL_CONFIG = ConfigDict(
    extra="forbid",
    strict=True,
    frozen=True,
    allow_inf_nan=False,
    str_strip_whitespace=False,
    hide_input_in_errors=True,
)


def _freeze_object(value: dict[str, JsonValue]) -> dict[str, JsonValue]:
    frozen = freeze_json(value)
    assert isinstance(frozen, dict)
    return frozen


FrozenJsonObject = Annotated[dict[str, JsonValue], AfterValidator(_freeze_object)]
"""A JSON object field of an immutable document: validated as JSON, then deep-frozen
(a ``dict`` subclass whose objects and arrays refuse every change)."""


def _empty() -> dict[str, JsonValue]:
    return FrozenDict()


_VALIDATED: dict[int, weakref.ReferenceType[BaseModel]] = {}


def _mark_validated(model: BaseModel) -> None:
    """Remember that *model* (immutable) was built by validation, not `model_construct`
    or ``model_copy(update=...)``, which skip it."""
    key = id(model)
    _VALIDATED[key] = weakref.ref(model, lambda _: _VALIDATED.pop(key, None))


def was_validated(model: BaseModel) -> bool:
    """Whether *model* came out of one of the edit methods of `Widget` and `Layout`, which
    validate what they build: the save path need not validate it again (limits apart)."""
    ref = _VALIDATED.get(id(model))
    return ref is not None and ref() is model


class Widget(BaseModel):
    """One tile on a dashboard: what it shows, where it sits on the grid, and its settings.

    ``x``/``y`` are the top-left grid cell (0-based), ``w``/``h`` the size in cells.
    Widgets are immutable (so loaded documents can be shared safely): change one with
    `with_changes`, which returns a validated copy.
    """

    model_config = _MODEL_CONFIG

    # Frozen, with deep-frozen settings: `Validator.check_json` may remember a checked
    # widget by identity (see `dashpersist.validation.IMMUTABLE_MARKER`).
    __dashpersist_immutable__: ClassVar[bool] = True

    id: WidgetId
    type: WidgetType
    title: str = ""
    x: Annotated[int, Field(ge=0)] = 0
    y: Annotated[int, Field(ge=0)] = 0
    w: Annotated[int, Field(ge=1)] = 1
    h: Annotated[int, Field(ge=1)] = 1
    settings: FrozenJsonObject = Field(default_factory=_empty)

    def with_changes(self, **changes: object) -> Self:
        """Return a validated copy with *changes* applied, e.g. ``widget.with_changes(x=3)``."""
        if type(self) is Widget:
            # Its field values validate as they are (settings deep-frozen): no dump needed.
            current = self.__dict__
        else:
            # A subclass may cache properties in __dict__ or hold mutable models: dump
            # it, in Python mode (the JSON mode's list for a tuple fails strict fields).
            current = self.model_dump(exclude=set(type(self).model_computed_fields))
        changed = type(self).model_validate({**current, **changes})
        _mark_validated(changed)
        return changed


class Layout(BaseModel):
    """A dashboard: its widgets and the state around them (theme, filters, grid).

    Widget ids are unique and every widget fits the grid (``x + w <= columns``).
    Overlapping widgets are allowed here (grid front ends stack them); `sanitize` moves
    them apart.

    Layouts are immutable: the manager can hand the same object to every reader without
    one caller's change leaking into another's. Build changed copies with
    `with_changes`, `with_widget`, `without_widget` and `update_widget`, or work on
    ``model_dump()`` and pass the dict back.
    """

    model_config = _MODEL_CONFIG

    schema_version: ClassVar[int] = 1
    # Frozen, with deep-frozen filters and metadata: `Validator.check_json` may remember
    # the JSON of its fields by identity (see `dashpersist.validation.IMMUTABLE_MARKER`).
    __dashpersist_immutable__: ClassVar[bool] = True

    widgets: Annotated[tuple[Widget, ...], Field(strict=False)] = ()
    theme: str = "light"
    filters: FrozenJsonObject = Field(default_factory=_empty)
    columns: Annotated[int, Field(ge=1, le=1000)] = 12
    metadata: FrozenJsonObject = Field(default_factory=_empty)

    def widget(self, widget_id: str) -> Widget:
        """Return the widget with *widget_id*; raise `KeyError` if there is none."""
        for widget in self.widgets:
            if widget.id == widget_id:
                return widget
        raise KeyError(widget_id)

    def with_changes(self, **changes: object) -> Self:
        """Return a validated copy with *changes*, e.g. ``layout.with_changes(theme="dark")``."""
        return type(self).model_validate({**self.model_dump(mode="json"), **changes})

    def with_widget(self, widget: Widget) -> Self:
        """Return a copy with *widget* added at the end, or replacing the widget with its id."""
        if type(widget) is not Widget:
            widget = Widget.model_validate(widget)
        widgets = self.widgets
        ids = [w.id for w in widgets]
        if widget.id not in ids:
            return self._with_widgets((*widgets, widget))
        index = ids.index(widget.id)
        replaced = (*widgets[:index], widget, *widgets[index + 1 :])
        # Ids stay unique: only the new widget can leave the grid.
        return self._with_widgets(replaced, fits=widget.x + widget.w <= self.columns)

    def without_widget(self, widget_id: str) -> Self:
        """Return a copy without the widget *widget_id*; raise `KeyError` if there is none."""
        self.widget(widget_id)
        return self._with_widgets(tuple(w for w in self.widgets if w.id != widget_id), fits=True)

    def _with_widgets(self, widgets: tuple[Widget, ...], *, fits: bool | None = None) -> Self:
        # Every widget is a validated, immutable Widget already: only the rules across
        # widgets need checking, which is far cheaper than validating the whole layout.
        # *fits* says whether they hold, judged from the change to a valid layout (None:
        # check them all).
        changed = self.model_copy(update={"widgets": widgets})
        valid = was_validated(self)
        if fits is None or not valid:
            fits = changed._grid_problem() is None
        if not fits:
            # Raise exactly the error full validation gives.
            return self.with_changes(widgets=[w.model_dump(mode="json") for w in widgets])
        if valid:
            _mark_validated(changed)  # the rest of the layout was validated before
        return changed

    def update_widget(self, widget_id: str, **changes: object) -> Self:
        """Return a copy in which widget *widget_id* has *changes*, e.g. ``x=0, y=4``."""
        widgets = self.widgets
        index = next((i for i, w in enumerate(widgets) if w.id == widget_id), None)
        if index is None:
            raise KeyError(widget_id)
        widget = widgets[index].with_changes(**changes)
        if widget.id != widget_id:
            return self.with_widget(widget)  # another id: added, or replacing its holder
        replaced = (*widgets[:index], widget, *widgets[index + 1 :])
        # Ids stay unique: only the changed widget can leave the grid.
        return self._with_widgets(replaced, fits=widget.x + widget.w <= self.columns)

    @model_validator(mode="after")
    def _check_grid(self) -> Layout:
        problem = self._grid_problem()
        if problem is not None:
            raise problem
        _mark_validated(self)
        return self

    def _grid_problem(self) -> PydanticCustomError | None:
        widgets = self.widgets
        # The common case, valid, in two passes at C speed; the loop below finds the first
        # problem when there is one.
        if len({widget.id for widget in widgets}) == len(widgets) and (
            not widgets or max([widget.x + widget.w for widget in widgets]) <= self.columns
        ):
            return None
        seen: set[str] = set()
        for index, widget in enumerate(self.widgets):
            if widget.id in seen:
                return PydanticCustomError(
                    "duplicate_widget_id",
                    "widget id already used by an earlier widget",
                    {"path": f"widgets[{index}].id"},
                )
            seen.add(widget.id)
            if widget.x + widget.w > self.columns:
                return PydanticCustomError(
                    "widget_outside_grid",
                    "x + w is past the grid's {columns} columns",
                    {"path": f"widgets[{index}]", "columns": self.columns},
                )
        return None


@dataclass(frozen=True, slots=True)
class SaveResult:
    """What became of a save.

    ``source`` says where the document is now: ``"storage"`` (committed as ``version``),
    ``"unchanged"`` (equal to the stored document; nothing written), ``"queued"``
    (waiting for autosave) or ``"outbox"`` (storage unreachable; parked durably).
    """

    success: bool
    version: int | None
    source: SaveSource
    error: DashPersistError | None = None
    merge: Any = None  # a MergeResult when the save was merged with a newer version


DocT = TypeVar("DocT")


@dataclass(frozen=True, slots=True)
class Versioned(Generic[DocT]):
    """A document with the stored version it is (or, when ``is_pending``, builds on)."""

    document: DocT
    version: int | None
    is_pending: bool = False


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What `PersistenceManager.sync` did to one document.

    ``version`` is the version the store holds now (``None``: no document); ``replayed``
    counts outbox entries that reached storage; ``pushed`` is the result of writing the
    queued autosave, if one was waiting; ``changed`` says whether the version differs
    from the one this manager knew before.
    """

    version: int | None
    replayed: int = 0
    pushed: SaveResult | None = None
    changed: bool = False


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version of a document, as history lists it."""

    version: int
    created_at: datetime
    change_type: ChangeType
    checksum: str
    description: str | None = None
    device_id: str | None = None
    label: str | None = None


@dataclass(frozen=True, slots=True)
class StoredLayoutInfo:
    """A layout id with its current version, as `list_layouts` reports it."""

    layout_id: str
    version: int
    updated_at: datetime
    extra: JsonObject = field(default_factory=dict)
