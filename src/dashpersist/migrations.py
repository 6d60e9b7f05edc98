"""Document schema migrations: every read returns the document upgraded to the current schema.

A document model declares its schema version as a class attribute
``schema_version: ClassVar[int]`` (1 when absent). When the model changes shape, raise it
and register an upcast from the previous version. Stored documents and history keep the
schema version they were written with, so old versions stay readable forever.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from dashpersist._canonical import copy_json
from dashpersist.errors import ConfigurationError, CorruptStoreError
from dashpersist.types import JsonObject

__all__ = ["SchemaMigrator", "Upcast", "schema_version_of"]

Upcast = Callable[[JsonObject], JsonObject]
"""Turn a document of schema version N into one of version N + 1."""


def schema_version_of(model: type[object]) -> int:
    """Return the schema version a document model declares (``schema_version``, default 1)."""
    version = getattr(model, "schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigurationError(f"{model.__name__}.schema_version must be an int >= 1")
    return version


class SchemaMigrator:
    """Upgrade documents written under older schema versions, one registered step at a time."""

    def __init__(self, current_version: int = 1) -> None:
        self._current = current_version
        self._upcasts: dict[int, Upcast] = {}
        self._lock = threading.Lock()

    @property
    def current_version(self) -> int:
        """The schema version documents are upgraded to."""
        return self._current

    def register(self, from_version: int, upcast: Upcast) -> None:
        """Register *upcast* to turn version *from_version* documents into *from_version* + 1.

        Raises `ConfigurationError` for a step outside ``1 .. current_version - 1`` or one
        registered twice.
        """
        if not 1 <= from_version < self._current:
            raise ConfigurationError(
                f"a migration from schema version {from_version} does not lead towards the "
                f"current version {self._current}"
            )
        with self._lock:
            if from_version in self._upcasts:
                raise ConfigurationError(f"a migration from version {from_version} exists already")
            self._upcasts[from_version] = upcast

    def upgrade(self, document: JsonObject, from_version: int) -> JsonObject:
        """Return *document* upgraded from *from_version* to the current schema version.

        The input is not changed. Raises `ConfigurationError` when a step is not
        registered and `CorruptStoreError` for a document from a newer schema than this
        program knows (it is never rewritten).
        """
        if from_version == self._current:
            return document
        if from_version > self._current:
            raise CorruptStoreError(
                f"the document has schema version {from_version}, newer than this program's "
                f"{self._current}; upgrade the program"
            )
        upgraded = copy_json(document)
        for version in range(from_version, self._current):
            upcast = self._upcasts.get(version)
            if upcast is None:
                raise ConfigurationError(
                    f"no migration registered from schema version {version} to {version + 1}"
                )
            upgraded = upcast(upgraded)
        return upgraded
