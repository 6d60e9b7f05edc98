"""DocumentCodec: between what the host hands over and what is stored, both ways.

Saving: validate the untrusted document (limits and schema), then encrypt the chosen
fields. Loading: decrypt, upgrade to the current schema, and build the model. Everything
after `encode` and before `decode` (storage, history, patches, outbox) sees only the
stored form, so plaintext of an encrypted field never reaches them.
"""

from __future__ import annotations

from typing import Generic, TypeVar, cast

import pydantic

from dashpersist.encryption import FieldEncryptor
from dashpersist.migrations import SchemaMigrator
from dashpersist.storage.protocol import DocumentKey
from dashpersist.types import JsonObject
from dashpersist.validation import ValidationReport, Validator, raise_validation_error

__all__ = ["DocumentCodec"]

DocT = TypeVar("DocT", bound=pydantic.BaseModel)


class DocumentCodec(Generic[DocT]):
    """Validate and encrypt documents going in; decrypt, upgrade and build them coming out."""

    def __init__(
        self,
        schema: type[DocT],
        validator: Validator[DocT],
        migrator: SchemaMigrator,
        encryptor: FieldEncryptor | None = None,
    ) -> None:
        self.schema = schema
        self.validator = validator
        self.migrator = migrator
        self.encryptor = encryptor
        # A frozen model (like Layout) can be handed to every reader; others are copied.
        self.shares_models = bool(schema.model_config.get("frozen"))

    def validate(self, document: pydantic.BaseModel | JsonObject) -> JsonObject:
        """Return *document* validated as plain JSON that shares nothing with the input.

        The result may share unchanged widgets with earlier results (the validator
        remembers the JSON of the widgets it checked): like every stored form, it is
        never changed in place. Raises `ValidationError` (limits, schema, hostile
        values), before any storage work.
        """
        if isinstance(document, pydantic.BaseModel):
            if type(document) is self.schema:
                return self.validator.check_json(document)
            return self.validator.check_json(cast(JsonObject, document.model_dump(mode="json")))
        return self.validator.check_json(document)

    def canonical(self, document: JsonObject) -> bytes:
        """Return the canonical JSON of *document*, a stored form this codec made.

        The stored form holds the validator's copies of the widgets (all of them, or,
        with encryption, those without an encrypted field), whose JSON the validator
        has: it joins that instead of encoding the whole document.
        """
        return self.validator.canonical(document)

    def encrypt(
        self, key: DocumentKey, plain: JsonObject, *, previous: JsonObject | None
    ) -> JsonObject:
        """Return the stored form of validated *plain*: chosen fields encrypted.

        *previous* is the stored form of the version this write follows, so an unchanged
        secret keeps its ciphertext. Raises `DecryptionError` for a foreign ciphertext.
        """
        if self.encryptor is None:
            return plain
        return self.encryptor.encrypt_document(
            plain, user_id=key.user_id, layout_id=key.layout_id, previous=previous
        )

    def encode(
        self, key: DocumentKey, document: DocT | JsonObject, *, previous: JsonObject | None
    ) -> JsonObject:
        """Return the stored form of *document*: validated, then encrypted."""
        return self.encrypt(key, self.validate(document), previous=previous)

    def plain(self, key: DocumentKey, stored: JsonObject, schema_version: int) -> JsonObject:
        """Return the stored form decrypted and upgraded to the current schema."""
        document = stored
        if self.encryptor is not None:
            document = self.encryptor.decrypt_document(
                document, user_id=key.user_id, layout_id=key.layout_id
            )
        return self.migrator.upgrade(document, schema_version)

    def decode(self, key: DocumentKey, stored: JsonObject, schema_version: int) -> DocT:
        """Return the model of a stored document (decrypted, upgraded, validated)."""
        return self.to_model(self.plain(key, stored, schema_version))

    def to_model(self, document: JsonObject) -> DocT:
        """Build the model of a plain, current-schema document."""
        try:
            return self.schema.model_validate(document)
        except pydantic.ValidationError as exc:
            raise_validation_error(exc)

    def report(self, document: DocT | JsonObject) -> ValidationReport:
        """Return what validating *document* finds, without raising."""
        return self.validator.validate(document)
