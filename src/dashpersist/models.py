"""The documents dashpersist stores by default, and the values its API returns.

`Layout` and `Widget` check what a single document can check about itself: field types
(strictly: ``"3"`` is not an integer and ``true`` is not ``1``), the widget id alphabet,
grid sizes and positions, unique widget ids and that every widget fits the grid.
Document-wide limits (bytes, depth, string length, ...) and per-type widget settings are
the `dashpersist.validation.Validator`'s job, because they are configurable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from dashpersist.types import ChangeType, JsonObject, JsonValue, SaveSource

if TYPE_CHECKING:
    from dashpersist.errors import DashPersistError

__all__ = [
    "ID_PATTERN",
    "Layout",
    "SaveResult",
    "StoredLayoutInfo",
    "VersionInfo",
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
    allow_inf_nan=False,
    validate_assignment=True,
    str_strip_whitespace=False,
    hide_input_in_errors=True,
)


class Widget(BaseModel):
    """One tile on a dashboard: what it shows, where it sits on the grid, and its settings.

    ``x``/``y`` are the top-left grid cell (0-based), ``w``/``h`` the size in cells.
    """

    model_config = _MODEL_CONFIG

    id: WidgetId
    type: WidgetType
    title: str = ""
    x: Annotated[int, Field(ge=0)] = 0
    y: Annotated[int, Field(ge=0)] = 0
    w: Annotated[int, Field(ge=1)] = 1
    h: Annotated[int, Field(ge=1)] = 1
    settings: dict[str, JsonValue] = Field(default_factory=dict)


class Layout(BaseModel):
    """A dashboard: its widgets and the state around them (theme, filters, grid).

    Widget ids are unique and every widget fits the grid (``x + w <= columns``).
    Overlapping widgets are allowed here (grid front ends stack them); `sanitize` moves
    them apart.
    """

    model_config = _MODEL_CONFIG

    widgets: list[Widget] = Field(default_factory=list)
    theme: str = "light"
    filters: dict[str, JsonValue] = Field(default_factory=dict)
    columns: Annotated[int, Field(ge=1, le=1000)] = 12
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_grid(self) -> Layout:
        seen: set[str] = set()
        for index, widget in enumerate(self.widgets):
            if widget.id in seen:
                raise PydanticCustomError(
                    "duplicate_widget_id",
                    "widget id already used by an earlier widget",
                    {"path": f"widgets[{index}].id"},
                )
            seen.add(widget.id)
            if widget.x + widget.w > self.columns:
                raise PydanticCustomError(
                    "widget_outside_grid",
                    "x + w is past the grid's {columns} columns",
                    {"path": f"widgets[{index}]", "columns": self.columns},
                )
        return self


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
