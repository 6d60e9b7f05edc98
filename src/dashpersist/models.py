"""The documents dashpersist stores by default, and the values its API returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from dashpersist.types import ChangeType, JsonObject, JsonValue, SaveSource

if TYPE_CHECKING:
    from dashpersist.errors import DashPersistError

__all__ = ["Layout", "SaveResult", "StoredLayoutInfo", "VersionInfo", "Widget"]

_MODEL_CONFIG = ConfigDict(
    extra="forbid",
    allow_inf_nan=False,
    validate_assignment=True,
    str_strip_whitespace=False,
)


class Widget(BaseModel):
    """One tile on a dashboard: what it shows, where it sits on the grid, and its settings."""

    model_config = _MODEL_CONFIG

    id: str
    type: str
    title: str = ""
    x: int = 0
    y: int = 0
    w: int = 1
    h: int = 1
    settings: dict[str, JsonValue] = Field(default_factory=dict)


class Layout(BaseModel):
    """A dashboard: its widgets and the state around them (theme, filters, grid)."""

    model_config = _MODEL_CONFIG

    widgets: list[Widget] = Field(default_factory=list)
    theme: str = "light"
    filters: dict[str, JsonValue] = Field(default_factory=dict)
    columns: int = 12
    metadata: dict[str, JsonValue] = Field(default_factory=dict)


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
