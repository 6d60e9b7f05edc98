"""Field-level encryption of documents: AES-256-GCM under a key ring, bound to its place.

Envelope. An encrypted field holds one JSON string::

    dp:v1:<key_id>:<base64url(nonce | ciphertext | tag), unpadded>

``v1`` is the format version, ``key_id`` names the key in the `KeyRing` (so decryption
never tries keys in turn), the nonce is 12 fresh bytes from ``os.urandom`` per
encryption (never a counter: two processes started from the same state cannot repeat
one), the tag is GCM's 16 bytes. The plaintext is the canonical JSON of the field's value,
so a field of any JSON type can be encrypted and comes back with its type.

Associated data. The AAD is the canonical JSON (`dashpersist._canonical`) of
``["dashpersist-field", "v1", user_id, layout_id, field_path, key_id]``. A ciphertext
copied to another user, another layout or another field therefore fails to decrypt with
`DecryptionError` naming user, layout and path. In ``field_path`` a list item that is an
object with a string ``id`` is named by that id (``widgets[w1].settings.api_key``),
anything else by its index (``[#3]``), so reordering widgets keeps every ciphertext valid.

The row version is *not* in the AAD, so a rollback can copy an old version's ciphertext
as is. Consequence (RELIABILITY.md S15): someone able to write the store can replace a
field's ciphertext with an *older ciphertext of the same field, user and layout*, and it
decrypts. Defending against that needs the version in the AAD and re-encryption on every
rollback; the store's hash chain of checksums (`pm.verify`) is what detects such a swap.

Keys. `KeyRing` holds ``{key_id: 32-byte key}``; the *primary* key encrypts and every key
decrypts. The primary is the one named by ``primary=``, else the last key of the mapping
(the newest, as dicts keep insertion order). Rotation: make the new key primary, run
`FieldEncryptor.rotate` over every stored document and version, and only then drop the
old key; `FieldEncryptor.needs_rotation` tells what is left.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import threading
import typing
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeGuard

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel

from dashpersist._canonical import canonical_json
from dashpersist.errors import ConfigurationError, DecryptionError, ValidationError
from dashpersist.types import JsonObject, JsonValue

__all__ = [
    "ENVELOPE_PREFIX",
    "Encrypted",
    "FieldEncryptor",
    "KeyRing",
    "encrypted_fields",
    "is_envelope",
]

FORMAT_VERSION: Final = "v1"
ENVELOPE_PREFIX: Final = f"dp:{FORMAT_VERSION}:"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_AAD_LABEL: Final = "dashpersist-field"


class Encrypted:
    """Marker for a model field whose value is encrypted at rest.

    ``api_key: Annotated[str, Encrypted]`` on a widget settings model; `encrypted_fields`
    turns the marks into the paths `FieldEncryptor` takes.
    """


def encrypted_fields(model: type[BaseModel], *, prefix: str = "") -> list[str]:
    """Return the paths of the fields of *model* marked `Encrypted`, below *prefix*.

    Nested models are followed, a ``list[Model]`` becomes ``name[*]``:
    ``encrypted_fields(ChartSettings, prefix="widgets[*].settings")`` gives
    ``["widgets[*].settings.api_key"]``.
    """
    paths: list[str] = []
    for name, info in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        if any(item is Encrypted or isinstance(item, Encrypted) for item in info.metadata):
            paths.append(path)
            continue
        annotation = info.annotation
        if typing.get_origin(annotation) is list:
            (annotation,) = typing.get_args(annotation)
            path += "[*]"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.extend(encrypted_fields(annotation, prefix=path))
    return paths


class KeyRing:
    """AES-256 keys by id: the primary encrypts, every key decrypts.

    The primary is *primary* if given, else the last key of *keys* (the newest). Key ids
    are 1 to 64 characters of ``A-Z a-z 0-9 _ -``. The ring never shows key bytes in its
    ``repr`` or in any message.
    """

    def __init__(self, keys: Mapping[str, bytes], *, primary: str | None = None) -> None:
        if not keys:
            raise ConfigurationError("a KeyRing needs at least one key")
        for key_id, key in keys.items():
            if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
                raise ConfigurationError(
                    "key ids are 1 to 64 characters of A-Z a-z 0-9 _ - (one was not)"
                )
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise ConfigurationError(f"key {key_id!r} is not {KEY_BYTES} bytes (AES-256)")
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._fingerprints = {key_id: _fingerprint(key) for key_id, key in keys.items()}
        self.primary_key_id = primary if primary is not None else list(keys)[-1]
        if self.primary_key_id not in keys:
            raise ConfigurationError(f"primary key id {self.primary_key_id!r} is not in the ring")

    @staticmethod
    def generate_key() -> bytes:
        """Return a new random 32-byte AES-256 key."""
        return AESGCM.generate_key(bit_length=256)

    @classmethod
    def from_env(
        cls, var: str = "DASHPERSIST_KEYS", *, environ: Mapping[str, str] | None = None
    ) -> KeyRing:
        """Return the ring described by environment variable *var*.

        Format: comma-separated ``key_id:base64key`` entries (standard or URL-safe
        base64, padding optional), oldest first; the last entry is the primary, e.g.
        ``DASHPERSIST_KEYS="k1:3q2+7w...,k2:AAEC..."``. Raises `ConfigurationError`
        naming the variable and the entry's key id, never the key.
        """
        text = (os.environ if environ is None else environ).get(var, "").strip()
        if not text:
            raise ConfigurationError(f"environment variable {var} is not set or empty")
        keys: dict[str, bytes] = {}
        for position, entry in enumerate(text.split(","), start=1):
            key_id, sep, encoded = entry.strip().partition(":")
            if not sep:
                raise ConfigurationError(f"{var}: entry {position} is not key_id:base64key")
            if key_id in keys:
                raise ConfigurationError(f"{var}: key id {key_id!r} appears twice")
            try:
                keys[key_id] = _b64decode(encoded.strip())
            except (binascii.Error, ValueError) as exc:
                raise ConfigurationError(f"{var}: key {key_id!r} is not valid base64") from exc
        return cls(keys)

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id, oldest first."""
        return tuple(self._ciphers)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._ciphers

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={list(self._ciphers)!r}, primary={self.primary_key_id!r})"

    def fingerprint(self, key_id: str) -> str:
        """Return a short keyed-hash fingerprint of a key: tells keys apart, reveals nothing."""
        return self._fingerprints[key_id]

    def _cipher(self, key_id: str) -> AESGCM | None:
        return self._ciphers.get(key_id)


def _fingerprint(key: bytes) -> str:
    return hashlib.blake2b(b"dashpersist key fingerprint", key=key, digest_size=6).hexdigest()


def _b64decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)


def is_envelope(value: object) -> TypeGuard[str]:
    """Return whether *value* looks like an encrypted field (an envelope string)."""
    return isinstance(value, str) and value.startswith("dp:v")


@dataclass(frozen=True, slots=True)
class _Where:
    """Which field of which document a ciphertext belongs to (the AAD, and error text)."""

    user_id: str
    layout_id: str
    path: str

    def aad(self, key_id: str) -> bytes:
        return canonical_json(
            [_AAD_LABEL, FORMAT_VERSION, self.user_id, self.layout_id, self.path, key_id]
        )

    def error(self, problem: str, reason: str, key_id: str | None = None) -> DecryptionError:
        return DecryptionError(
            f"cannot decrypt field {self.path!r} of layout {self.layout_id!r} of user "
            f"{self.user_id!r}: {problem}",
            reason=reason,
            user_id=self.user_id,
            layout_id=self.layout_id,
            path=self.path,
            key_id=key_id,
        )


@dataclass(frozen=True, slots=True)
class _Envelope:
    version: str
    key_id: str
    payload: bytes


# -- paths -------------------------------------------------------------------------------

_Segment = str | None  # a key, or None for "every item of a list" ([*])


def _compile(path: str) -> tuple[_Segment, ...]:
    segments: list[_Segment] = []
    for part in path.split("."):
        name, _, rest = part.partition("[")
        stars = f"[{rest}" if rest else ""
        if not name or stars.replace("[*]", "") or "]" in name:
            raise ConfigurationError(
                f"encrypted field path {path!r}: use dotted keys and [*] (widgets[*].settings.x)"
            )
        segments.append(name)
        segments.extend(None for _ in range(stars.count("[*]")))
    return tuple(segments)


_PathParts = tuple[object, ...]
"""A field's path, built lazily: keys, and (item, index) pairs for list items."""


def _path_text(parts: _PathParts) -> str:
    text = ""
    for part in parts:
        if isinstance(part, str):
            text = f"{text}.{part}" if text else part
            continue
        item, index = typing.cast(tuple[JsonValue, int], part)
        item_id = item.get("id") if isinstance(item, dict) else None
        text += f"[{item_id}]" if isinstance(item_id, str) else f"[#{index}]"
    return text


def _find(
    node: JsonValue, segments: tuple[_Segment, ...], parts: _PathParts = ()
) -> Iterator[tuple[str, JsonValue]]:
    """Yield ``(path, value)`` for every field *segments* reach in *node*."""
    head, rest = segments[0], segments[1:]
    if head is None:
        if isinstance(node, list):
            for index, item in _items_reaching(node, rest):
                yield from _find(item, rest, (*parts, (item, index)))
    elif isinstance(node, dict) and head in node:
        if rest:
            yield from _find(node[head], rest, (*parts, head))
        else:
            yield _path_text((*parts, head)), node[head]


def _items_reaching(
    items: list[JsonValue], segments: tuple[_Segment, ...]
) -> list[tuple[int, JsonValue]]:
    """Return ``(index, item)`` for the items in which *segments* may find a field.

    Hot path (every widget of a layout, on every save): when the rest of the path is
    plain keys, items lacking them are skipped in one flat loop.
    """
    if None in segments:
        return list(enumerate(items))
    reaching = []
    for index, item in enumerate(items):
        node = item
        for key in segments:
            if type(node) is not dict or key not in node:
                break
            node = node[key]
        else:
            reaching.append((index, item))
    return reaching


def _replace(
    node: JsonValue,
    segments: tuple[_Segment, ...],
    change: Callable[[str, JsonValue], JsonValue],
    parts: _PathParts = (),
) -> JsonValue:
    """Return *node* with every field *segments* reach replaced by ``change(path, value)``.

    Copy-on-write: only containers on the way to a field that changed are new; when
    nothing changed (by identity) *node* itself comes back.
    """
    head, rest = segments[0], segments[1:]
    if head is None:
        if not isinstance(node, list):
            return node
        copied: list[JsonValue] | None = None
        for index, item in _items_reaching(node, rest):
            new = _replace(item, rest, change, (*parts, (item, index)))
            if new is not item:
                copied = copied or list(node)
                copied[index] = new
        return node if copied is None else copied
    if not isinstance(node, dict) or head not in node:
        return node
    old = node[head]
    if rest:
        new = _replace(old, rest, change, (*parts, head))
    else:
        new = change(_path_text((*parts, head)), old)
    return node if new is old else {**node, head: new}


# -- the encryptor ----------------------------------------------------------------------


class FieldEncryptor:
    """Encrypt and decrypt chosen fields of documents with a `KeyRing`. Thread-safe.

    *fields* are paths of dotted keys with ``[*]`` for every item of a list, e.g.
    ``"widgets[*].settings.api_key"``; a path absent from a document is skipped. Every
    method is pure: it returns a new document and leaves its input unchanged (containers
    on the way to a changed field are copied, everything else is shared with the input,
    so copy the result before changing it in place).
    """

    def __init__(
        self, keyring: KeyRing, fields: Sequence[str], *, memory_size: int = 10_000
    ) -> None:
        self.keyring = keyring
        self.fields = tuple(dict.fromkeys(fields))
        self._paths = tuple(_compile(path) for path in self.fields)
        # Envelopes this encryptor sealed or opened, in their context, with a keyed digest
        # of their plaintext (random per-process key, memory only): telling an unchanged
        # secret from a changed one then needs no decryption. Never stored or shown.
        self._digest_key = os.urandom(32)
        self._known: OrderedDict[tuple[str, str, str, str], bytes] = OrderedDict()
        self._memory_size = memory_size
        self._lock = threading.Lock()

    def encrypt_document(
        self,
        doc: JsonObject,
        *,
        user_id: str,
        layout_id: str,
        previous: JsonObject | None = None,
    ) -> JsonObject:
        """Return *doc* with every chosen field encrypted under the primary key.

        *previous* is the stored (encrypted) previous version: a field whose plaintext is
        unchanged keeps its previous ciphertext, so history and merges see no change.
        An envelope already in *doc* is kept if it decrypts for this user, layout and
        path; otherwise `DecryptionError` (a client cannot smuggle in a foreign ciphertext).
        """
        old = self._envelopes(previous) if previous is not None else {}

        def encrypt(where: _Where, value: JsonValue) -> JsonValue:
            if is_envelope(value):
                self._decrypt(value, where)
                return value
            plaintext = _plaintext(value, where.path)
            kept = old.get(where.path)
            if kept is not None and self._same_plaintext(kept, plaintext, where):
                return kept
            return self._encrypt(plaintext, where)

        return self._rewrite(doc, user_id, layout_id, encrypt)

    def decrypt_document(self, doc: JsonObject, *, user_id: str, layout_id: str) -> JsonObject:
        """Return *doc* with every chosen field decrypted.

        A field that is not an envelope (stored before encryption was turned on) is
        returned as is. Raises `DecryptionError` naming user, layout and path when a key
        is missing, a ciphertext was altered, or it belongs to another user, layout or field.
        """

        def decrypt(where: _Where, value: JsonValue) -> JsonValue:
            return self._decrypt(value, where) if is_envelope(value) else value

        return self._rewrite(doc, user_id, layout_id, decrypt)

    def rotate(self, doc: JsonObject, *, user_id: str, layout_id: str) -> JsonObject:
        """Return *doc* with every chosen field encrypted under the primary key.

        Fields already under the primary key are checked and kept; others are decrypted
        and encrypted afresh (plaintext fields too). Raises `DecryptionError` as
        `decrypt_document` does, so a rotation never launders a tampered field.
        """

        def reencrypt(where: _Where, value: JsonValue) -> JsonValue:
            if is_envelope(value):
                plain = self._decrypt(value, where)
                if _parse(value, where).key_id == self.keyring.primary_key_id:
                    return value
                value = plain
            return self._encrypt(_plaintext(value, where.path), where)

        return self._rewrite(doc, user_id, layout_id, reencrypt)

    def needs_rotation(self, doc: JsonObject) -> bool:
        """Return whether any chosen field of *doc* is not encrypted under the primary key."""
        prefix = f"{ENVELOPE_PREFIX}{self.keyring.primary_key_id}:"
        return any(
            not (isinstance(value, str) and value.startswith(prefix))
            for _, value in self._values(doc)
        )

    def key_ids_used(self, doc: JsonObject) -> set[str]:
        """Return the key ids the envelopes in *doc* name (which keys it still needs)."""
        used = set()
        for _, value in self._values(doc):
            if isinstance(value, str) and value.startswith(ENVELOPE_PREFIX):
                used.add(value[len(ENVELOPE_PREFIX) :].partition(":")[0])
        return used

    # -- internals ------------------------------------------------------------------------

    def _values(self, doc: JsonObject) -> Iterator[tuple[str, JsonValue]]:
        for segments in self._paths:
            yield from _find(doc, segments)

    def _envelopes(self, doc: JsonObject) -> dict[str, str]:
        return {path: value for path, value in self._values(doc) if is_envelope(value)}

    def _rewrite(
        self,
        doc: JsonObject,
        user_id: str,
        layout_id: str,
        change: Callable[[_Where, JsonValue], JsonValue],
    ) -> JsonObject:
        def change_at(path: str, value: JsonValue) -> JsonValue:
            return change(_Where(user_id, layout_id, path), value)

        result: JsonValue = doc
        for segments in self._paths:
            result = _replace(result, segments, change_at)
        return typing.cast(JsonObject, result)

    def _encrypt(self, plaintext: bytes, where: _Where) -> str:
        key_id = self.keyring.primary_key_id
        cipher = self.keyring._cipher(key_id)
        assert cipher is not None
        # A fresh random nonce per encryption: reusing one with a key breaks GCM
        # (pyca: "NEVER REUSE A NONCE"); 96 random bits keep collisions negligible
        # below NIST SP 800-38D's 2**32 encryptions per key.
        nonce = os.urandom(NONCE_BYTES)
        sealed = cipher.encrypt(nonce, plaintext, where.aad(key_id))
        payload = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
        envelope = f"{ENVELOPE_PREFIX}{key_id}:{payload}"
        self._remember(envelope, plaintext, where)
        return envelope

    def _digest(self, plaintext: bytes) -> bytes:
        return hashlib.blake2b(plaintext, key=self._digest_key, digest_size=16).digest()

    def _remember(self, envelope: str, plaintext: bytes, where: _Where) -> None:
        if self._memory_size <= 0:
            return
        digest = self._digest(plaintext)
        with self._lock:
            self._known[(where.user_id, where.layout_id, where.path, envelope)] = digest
            while len(self._known) > self._memory_size:
                self._known.popitem(last=False)

    def _decrypt_bytes(self, value: str, where: _Where) -> bytes:
        envelope = _parse(value, where)
        cipher = self.keyring._cipher(envelope.key_id)
        if cipher is None:
            raise where.error(
                f"key id {envelope.key_id!r} is not in the key ring (it has "
                f"{', '.join(self.keyring.key_ids)})",
                "missing_key",
                envelope.key_id,
            )
        nonce, sealed = envelope.payload[:NONCE_BYTES], envelope.payload[NONCE_BYTES:]
        aad = where.aad(envelope.key_id)
        try:
            return cipher.decrypt(nonce, sealed, aad)
        except InvalidTag as exc:
            raise where.error(
                f"ciphertext does not authenticate under key id {envelope.key_id!r}: altered, "
                "encrypted with other key bytes, or moved from another user, layout or field",
                "authentication_failed",
                envelope.key_id,
            ) from exc

    def _decrypt(self, value: str, where: _Where) -> JsonValue:
        plaintext = self._decrypt_bytes(value, where)
        self._remember(value, plaintext, where)
        return typing.cast(JsonValue, orjson.loads(plaintext))

    def _same_plaintext(self, envelope: str, plaintext: bytes, where: _Where) -> bool:
        with self._lock:
            known = self._known.get((where.user_id, where.layout_id, where.path, envelope))
        if known is not None:
            return hmac.compare_digest(known, self._digest(plaintext))
        try:
            return self._decrypt_bytes(envelope, where) == plaintext
        except DecryptionError:
            # The stored value is unreadable (say, its key was retired): the new value is
            # encrypted afresh; loading the old version still reports the problem.
            return False


def _plaintext(value: JsonValue, path: str) -> bytes:
    try:
        return canonical_json(value)
    except ValidationError as exc:
        raise ValidationError(exc.issues, message=f"{path}: value cannot be encrypted") from exc


def _parse(value: str, where: _Where) -> _Envelope:
    parts = value.split(":")
    if len(parts) != 4 or parts[0] != "dp":
        raise where.error("malformed envelope", "malformed")
    _, version, key_id, encoded = parts
    if version != FORMAT_VERSION:
        raise where.error(f"unsupported envelope format {version!r}", "unsupported_version")
    try:
        payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError) as exc:
        raise where.error("malformed envelope (base64)", "malformed", key_id) from exc
    if len(payload) < NONCE_BYTES + TAG_BYTES:
        raise where.error("truncated envelope", "malformed", key_id)
    return _Envelope(version, key_id, payload)
