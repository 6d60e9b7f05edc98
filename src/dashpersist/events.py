"""Change events: what happened to which document, for hosts that want to react."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, TypeAlias

__all__ = ["ChangeEvent", "EventBus", "EventKind", "Subscriber", "Unsubscribe"]

_LOG = logging.getLogger(__name__)

EventKind: TypeAlias = Literal[
    "saved",
    "queued",
    "merged",
    "rolled_back",
    "deleted",
    "outbox_stored",
    "outbox_replayed",
    "outbox_blocked",
    "save_failed",
]


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One change to one document. ``version`` is ``None`` when nothing was committed yet
    (``queued``, ``outbox_stored``, ``save_failed``); ``error`` is set for failures."""

    kind: EventKind
    user_id: str
    layout_id: str
    version: int | None
    device_id: str | None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    error: Exception | None = None


Subscriber: TypeAlias = Callable[[ChangeEvent], None]
Unsubscribe: TypeAlias = Callable[[], None]


class EventBus:
    """Deliver events to subscribers, synchronously, in subscription order.

    A subscriber that raises is logged and skipped: one broken listener never stops a
    save or another listener.
    """

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Subscriber) -> Unsubscribe:
        """Call *callback* with every event from now on; return a function that stops it."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    @property
    def has_subscribers(self) -> bool:
        """Whether anyone listens (an emitter may skip building an event otherwise)."""
        return bool(self._subscribers)

    def emit(self, event: ChangeEvent) -> None:
        """Deliver *event* to every subscriber."""
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(event)
            except Exception:  # noqa: BLE001 - a broken listener must not break a save
                _LOG.exception(
                    "event subscriber failed on %s of %r/%r",
                    event.kind,
                    event.user_id,
                    event.layout_id,
                )
