"""PersistenceConfig: every setting of a manager, validated, with its unit in its name or doc."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dashpersist.validation import Limits

__all__ = ["PersistenceConfig"]


class PersistenceConfig(BaseModel):
    """Settings of a `PersistenceManager`; immutable, change them with `update_config`.

    Times are float seconds. Unknown names are refused, so a typo is an error rather
    than a silently ignored setting.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    auto_save: bool = True
    """Queue ``save_layout(immediate=False)`` calls and write them after a quiet period."""
    auto_save_delay: float = Field(2.0, ge=0)
    """Seconds of quiet after the last edit before a queued save is written."""
    auto_save_max_wait: float = Field(10.0, gt=0)
    """Longest a queued edit waits while edits keep coming, in seconds."""
    enable_versioning: bool = True
    """Keep every committed write in the document's history."""
    max_versions: int = Field(50, ge=1)
    """How many versions of a document history keeps at least (labelled ones regardless);
    trimming cuts at a keyframe, so up to ``keyframe_interval - 1`` more may remain."""
    keyframe_interval: int = Field(32, ge=1)
    """Store a whole snapshot every this many versions; between them, history holds patches."""
    enable_conflict_resolution: bool = True
    """Merge a save from a stale base three-way instead of refusing it."""
    merge_prefer: Literal["local", "remote", "newest"] = "newest"
    """Who wins a field both sides changed: this device, the stored version, or the later
    edit (ties broken by content, so every device picks the same winner)."""
    enable_encryption: bool = False
    """Encrypt the fields named in ``encrypted_fields`` before anything is stored."""
    encrypted_fields: tuple[str, ...] = ("widgets[*].settings.api_key",)
    """Paths of fields to encrypt, ``[*]`` matching every list item."""
    limits: Limits = Field(default_factory=Limits)
    """Size and shape limits every saved document must keep (bytes, depth, widgets, ...)."""
    allow_unknown_widget_types: bool = True
    """Accept widgets whose type has no registered settings model (their settings are then
    any JSON object); ``False`` refuses them."""
    outbox_probe_interval: float = Field(5.0, gt=0)
    """Seconds between background attempts to replay the outbox while entries wait."""
    outbox_probe_max_interval: float = Field(60.0, gt=0)
    """Longest wait between replay attempts while storage stays down (backoff doubles)."""
    widget_cache_purge_interval: float = Field(300.0, gt=0)
    """Seconds between background purges of expired widget data (with ``start_threads``)."""
    outbox_dir: Path | None = None
    """Folder of the durable offline outbox; ``None``: a per-store user data folder."""
    cache_ttl: float = Field(300.0, ge=0)
    """Seconds a read stays in this process's cache (writes here invalidate it at once)."""
    cache_size: int = Field(1024, ge=0)
    """How many documents the read cache holds; 0 turns the cache off."""
    retry_attempts: int = Field(3, ge=1)
    """Attempts at a storage call that fails transiently (busy, unreachable), the first included."""
    retry_initial_delay: float = Field(0.1, ge=0)
    """Backoff before the second attempt, in seconds; doubles each time, with full jitter."""
    retry_max_delay: float = Field(5.0, ge=0)
    """Cap on one backoff, in seconds."""

    @model_validator(mode="after")
    def _check_times(self) -> PersistenceConfig:
        if self.auto_save_max_wait < self.auto_save_delay:
            raise ValueError("auto_save_max_wait must be at least auto_save_delay")
        if self.retry_max_delay < self.retry_initial_delay:
            raise ValueError("retry_max_delay must be at least retry_initial_delay")
        return self
