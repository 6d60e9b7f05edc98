"""Describe what changed between two versions of a layout, for people rather than machines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from dashpersist.types import JsonObject, JsonPatch, JsonValue

__all__ = ["ChangeKind", "LayoutChange", "LayoutDiff", "describe_changes", "summarize"]

ChangeKind: TypeAlias = Literal[
    "widget_added",
    "widget_removed",
    "widget_moved",
    "widget_resized",
    "widget_retitled",
    "widget_retyped",
    "widget_settings_changed",
    "widgets_reordered",
    "field_changed",
]


@dataclass(frozen=True, slots=True)
class LayoutChange:
    """One change a person would name: a widget moved, a setting changed, the theme switched.

    ``paths`` lists the settings keys (for ``widget_settings_changed``) or the JSON pointer
    of the changed field (for ``field_changed``).
    """

    kind: ChangeKind
    widget_id: str | None = None
    paths: tuple[str, ...] = ()

    def describe(self) -> str:
        """Return the change as a short English phrase."""
        subject = f"widget {self.widget_id!r}"
        listed = ", ".join(path.lstrip("/") for path in self.paths)
        return _PHRASES[self.kind].format(subject=subject, paths=listed)


_PHRASES: dict[ChangeKind, str] = {
    "widget_added": "added {subject}",
    "widget_removed": "removed {subject}",
    "widget_moved": "moved {subject}",
    "widget_resized": "resized {subject}",
    "widget_retitled": "retitled {subject}",
    "widget_retyped": "changed the type of {subject}",
    "widget_settings_changed": "changed settings {paths} of {subject}",
    "widgets_reordered": "reordered widgets",
    "field_changed": "changed {paths}",
}


@dataclass(frozen=True, slots=True)
class LayoutDiff:
    """The difference between two versions: an RFC 6902 ``patch`` and the ``changes`` in it."""

    from_version: int | None
    to_version: int | None
    patch: JsonPatch
    changes: list[LayoutChange] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """Return a one-line description of the changes."""
        return summarize(self.changes)


def _widgets_by_id(document: JsonObject) -> dict[str, JsonObject] | None:
    widgets = document.get("widgets")
    if not isinstance(widgets, list):
        return None
    by_id: dict[str, JsonObject] = {}
    for widget in widgets:
        if not isinstance(widget, dict) or not isinstance(widget.get("id"), str):
            return None
        by_id[str(widget["id"])] = widget
    return by_id


def _same(a: JsonValue, b: JsonValue) -> bool:
    # 1 == 1.0 == True in Python; JSON tells them apart, and so must a diff.
    if type(a) is not type(b):
        return False
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _widget_changes(widget_id: str, before: JsonObject, after: JsonObject) -> list[LayoutChange]:
    changes: list[LayoutChange] = []
    if any(not _same(before.get(k), after.get(k)) for k in ("x", "y")):
        changes.append(LayoutChange("widget_moved", widget_id))
    if any(not _same(before.get(k), after.get(k)) for k in ("w", "h")):
        changes.append(LayoutChange("widget_resized", widget_id))
    if not _same(before.get("title"), after.get("title")):
        changes.append(LayoutChange("widget_retitled", widget_id))
    if not _same(before.get("type"), after.get("type")):
        changes.append(LayoutChange("widget_retyped", widget_id))
    settings_before, settings_after = before.get("settings"), after.get("settings")
    if not _same(settings_before, settings_after):
        old = settings_before if isinstance(settings_before, dict) else {}
        new = settings_after if isinstance(settings_after, dict) else {}
        keys = sorted(k for k in old.keys() | new.keys() if not _same(old.get(k), new.get(k)))
        changes.append(LayoutChange("widget_settings_changed", widget_id, tuple(keys)))
    known = {"id", "x", "y", "w", "h", "title", "type", "settings"}
    other = sorted(
        k for k in (before.keys() | after.keys()) - known if not _same(before.get(k), after.get(k))
    )
    if other:
        changes.append(LayoutChange("widget_settings_changed", widget_id, tuple(other)))
    return changes


def describe_changes(before: JsonObject, after: JsonObject) -> list[LayoutChange]:
    """Return the changes from *before* to *after*: per widget (matched by id), then the rest.

    Documents without a ``widgets`` list of objects with ids are described field by field.
    """
    changes: list[LayoutChange] = []
    old_widgets, new_widgets = _widgets_by_id(before), _widgets_by_id(after)
    skip: set[str] = set()
    if old_widgets is not None and new_widgets is not None:
        skip.add("widgets")
        for widget_id, widget in new_widgets.items():
            if widget_id not in old_widgets:
                changes.append(LayoutChange("widget_added", widget_id))
            else:
                changes += _widget_changes(widget_id, old_widgets[widget_id], widget)
        changes += [
            LayoutChange("widget_removed", widget_id)
            for widget_id in old_widgets
            if widget_id not in new_widgets
        ]
        kept_old = [w for w in old_widgets if w in new_widgets]
        kept_new = [w for w in new_widgets if w in old_widgets]
        if kept_old != kept_new:
            changes.append(LayoutChange("widgets_reordered"))
    for name in sorted((before.keys() | after.keys()) - skip):
        if not _same(before.get(name), after.get(name)):
            changes.append(LayoutChange("field_changed", paths=(f"/{name}",)))
    return changes


def summarize(changes: list[LayoutChange], *, limit: int = 3) -> str:
    """Return a one-line summary, e.g. ``"moved widget 'w1'; changed theme (+2 more)"``."""
    if not changes:
        return "no changes"
    shown = "; ".join(change.describe() for change in changes[:limit])
    more = f" (+{len(changes) - limit} more)" if len(changes) > limit else ""
    return shown[0].upper() + shown[1:] + more
