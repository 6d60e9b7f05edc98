"""Validation and sanitizing of untrusted documents, before anything reaches storage.

A document passes three gates, in this order, whatever the backend:

1. **Bytes.** JSON text over ``Limits.max_document_bytes`` is refused before it is parsed.
2. **Shape.** An iterative walk (no recursion, so no `RecursionError`) enforces the
   document-wide `Limits`: depth, keys per object, array length, string length, integer
   range, finite numbers, string keys, no ``__proto__``/``constructor``/``prototype``
   keys, no ownership fields (``user_id``, ``version``, ...) at the top level, no NUL or
   other C0 control characters (tab, newline and carriage return are allowed), no lone
   surrogates, no duplicate keys in JSON text. The walk stops at the first limit it
   crosses, so a hostile document costs time and memory bounded by the limits, not by
   its own size.
3. **Schema.** The pydantic model (default `Layout`) checks types, ids and the grid;
   widget settings are checked against the models registered per widget type.

Every refusal is a `ValidationError` (a `PayloadTooLargeError` for size limits) whose
issues name the JSON path, the rule and the limit, never the offending value.

`Validator.check_json` is the save path: it keeps the widgets it has already validated
(by their canonical bytes), so saving a 50-widget layout in which one widget changed
validates one widget, not fifty. `Validator.sanitize` repairs what can be repaired
(markup via nh3/Ammonia, control characters, grid positions, duplicate ids, overlaps,
over-long strings) and lists each fix as a warning.
"""

from __future__ import annotations

import collections
import functools
import html
import json
import math
import operator
import re
import threading
import typing
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress, count, repeat
from typing import Generic, NoReturn, TypeAlias, TypeVar, cast, overload

import nh3
import orjson
import pydantic
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import InitErrorDetails, PydanticCustomError

from dashpersist._canonical import canonical_json, has_non_finite
from dashpersist.encryption import encrypted_fields
from dashpersist.errors import PayloadTooLargeError, ValidationError, ValidationIssue
from dashpersist.models import ID_PATTERN, Layout, Widget, was_validated
from dashpersist.types import JsonObject, JsonValue

__all__ = [
    "Limits",
    "ValidationReport",
    "Validator",
    "sanitize",
    "validate",
]

ModelT = TypeVar("ModelT", bound=BaseModel)
JsonInput: TypeAlias = Mapping[str, object] | BaseModel | bytes | bytearray | str
"""What the validator accepts: a JSON-like mapping (anything in it is checked), a model
instance, or JSON text."""

POLLUTING_KEYS = frozenset({"__proto__", "constructor", "prototype"})
"""Keys that poison JavaScript consumers (prototype pollution), refused at any depth."""

SIZE_RULES = frozenset(
    {"max_bytes", "max_string_length", "max_array_length", "max_keys", "max_widgets"}
)
"""Rules whose refusal raises `PayloadTooLargeError` rather than plain `ValidationError`."""

_SAFE_FLOAT = 9007199254740992.0  # 2**53: larger floats may be integers orjson widened
_ALLOWED_CONTROLS = frozenset("\t\n\r")
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_MAX_REPORTED = 20
_SORTED = orjson.OPT_SORT_KEYS
_ITEM_KEY_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


class Limits(BaseModel):
    """Document-wide limits, enforced before the schema; each is named when it is hit.

    Defaults follow OWASP API4:2023 ("define and enforce a maximum size of data on all
    incoming parameters and payloads"). Depth counts containers: a layout's widget
    settings object sits at depth 4.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    max_document_bytes: int = Field(default=1_048_576, ge=64)
    max_depth: int = Field(default=32, ge=2, le=200)
    max_widgets: int = Field(default=500, ge=0)
    max_string_length: int = Field(default=10_000, ge=1)
    max_keys_per_object: int = Field(default=1_000, ge=1)
    max_array_length: int = Field(default=10_000, ge=1)
    max_integer: int = Field(default=2**53 - 1, ge=1)
    reserved_keys: frozenset[str] = frozenset(
        {"user_id", "layout_id", "tenant", "tenant_id", "version"}
    )
    """Ownership and versioning fields refused at the top level of a document body: they
    belong to the store, never to the client."""


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """The outcome of `Validator.validate`: refusals in ``errors``, advice in ``warnings``."""

    valid: bool
    errors: tuple[ValidationIssue, ...] = ()
    warnings: tuple[ValidationIssue, ...] = ()


# -- paths -----------------------------------------------------------------------------


def _join(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    text = str(key)
    if text.isidentifier() and text.isascii():
        return f"{path}.{text}" if path else text
    # Keys are structure, not values, but a hostile key must not flood a message.
    shown = orjson.dumps(text[:40].encode("utf-8", "backslashreplace").decode("ascii", "replace"))
    return f"{path}[{shown.decode()}]"


def _loc_path(loc: Iterable[int | str], prefix: str = "") -> str:
    path = prefix
    for part in loc:
        path = _join(path, part)
    return path


# -- gate 1: JSON text -----------------------------------------------------------------


class _DuplicateKeys(dict[str, JsonValue]):
    """A parsed object that had duplicate keys in its JSON text."""


class _OutOfRangeInteger:
    """Stands in for an integer literal beyond the limit (the number is never kept)."""


def _parse_text(text: bytes | str, limits: Limits) -> tuple[JsonValue, bytes]:
    cap = limits.max_document_bytes
    if isinstance(text, str):
        if len(text) > cap:
            _raise([_too_large(cap)])
        raw = text.encode("utf-8", "surrogatepass")
    else:
        raw = bytes(text)
    if len(raw) > cap:
        _raise([_too_large(cap)])
    try:
        return orjson.loads(raw), raw
    except orjson.JSONDecodeError as exc:
        _raise([_syntax_issue(exc, raw, limits)])


def _syntax_issue(exc: orjson.JSONDecodeError, raw: bytes, limits: Limits) -> ValidationIssue:
    try:
        rest = raw.decode("utf-8")[exc.pos : exc.pos + 8]
    except UnicodeDecodeError:
        rest = ""
    if "depth" in exc.msg:
        rule, message = "max_depth", _depth_message(limits)
    elif "infinity" in exc.msg or rest.startswith(("NaN", "Infinity")):
        rule, message = "finite_number", "NaN and infinity are not JSON numbers"
    elif "surrogate" in exc.msg:
        rule, message = "lone_surrogate", "contains a lone surrogate (not encodable as UTF-8)"
    else:
        rule, message = "json_syntax", f"not valid JSON: {exc.msg} at character {exc.pos}"
    return ValidationIssue("", rule, message)


def _parse_marked(raw: bytes, max_integer: int) -> JsonValue:
    """Parse *raw* again with the standard library to see what orjson hides: duplicate
    keys (the last one wins) and integers beyond 64 bits (widened to floats)."""

    def pairs(items: list[tuple[str, JsonValue]]) -> dict[str, JsonValue]:
        result = dict(items)
        return _DuplicateKeys(items) if len(result) != len(items) else result

    def integer(text: str) -> object:
        digits = text.lstrip("-")
        if (
            len(digits) > len(str(max_integer))
            or int(text) > max_integer
            or -int(text) > max_integer
        ):
            return _OutOfRangeInteger()
        return int(text)

    # Depth is already known to be within the limit, so the recursive parser is safe here.
    return cast(JsonValue, json.loads(raw, object_pairs_hook=pairs, parse_int=integer))


def _too_large(cap: int) -> ValidationIssue:
    return ValidationIssue(
        "", "max_bytes", f"document is over the limit of {cap} bytes (max_document_bytes)"
    )


# -- gate 2: shape ---------------------------------------------------------------------


@dataclass(slots=True)
class _Summary:
    keys: int = 0
    has_large_float: bool = False


def _fits(  # noqa: PLR0911, PLR0912 - a flat hot loop, several times faster than helpers
    value: JsonValue, limits: Limits, *, depth: int = 1
) -> _Summary | None:
    """Return a summary when *value* plainly keeps the structural limits, ``None`` when it
    may not (the precise `_inspect` then finds out). Hot path: explicit loops only."""
    max_depth = limits.max_depth
    max_keys = limits.max_keys_per_object
    max_items = limits.max_array_length
    max_str = limits.max_string_length
    max_int = limits.max_integer
    budget = limits.max_document_bytes
    summary = _Summary()
    stack: list[tuple[JsonValue, int]] = [(value, depth)]
    used = 0
    while stack:
        node, level = stack.pop()
        if level > max_depth:
            return None
        children: Iterable[JsonValue]
        if type(node) is dict:
            if len(node) > max_keys:
                return None
            summary.keys += len(node)
            for key in node:
                if type(key) is not str or len(key) > max_str or key in POLLUTING_KEYS:
                    return None
                used += len(key)
            children = node.values()
        elif type(node) is list:
            if len(node) > max_items:
                return None
            children = node
        else:
            return None
        for child in children:
            kind = type(child)
            if kind is str:
                if len(child) > max_str:  # type: ignore[arg-type]
                    return None
                used += len(child)  # type: ignore[arg-type]
            elif kind is int:
                if not -max_int <= child <= max_int:  # type: ignore[operator]
                    return None
            elif kind is float:
                if not -_SAFE_FLOAT < child < _SAFE_FLOAT:  # type: ignore[operator]
                    if not math.isfinite(child):  # type: ignore[arg-type]
                        return None
                    summary.has_large_float = True
            elif kind is dict or kind is list:
                stack.append((child, level + 1))
            elif child is not None and kind is not bool:
                return None
        # Each member costs at least a separator and a quote pair or a digit: a lower
        # bound of the encoded size, so a document is never refused for being near it.
        used += 2 + 2 * len(node)
        if used > budget:
            return None
    return summary


@dataclass(slots=True)
class _Findings:
    errors: list[ValidationIssue] = field(default_factory=list)
    warnings: list[ValidationIssue] = field(default_factory=list)

    def error(self, path: str, rule: str, message: str) -> None:
        self.errors.append(ValidationIssue(path, rule, message))

    @property
    def full(self) -> bool:
        return len(self.errors) >= _MAX_REPORTED


def _string_problem(text: str, max_length: int) -> tuple[str, str] | None:
    if len(text) > max_length:
        return (
            "max_string_length",
            f"string is longer than the limit of {max_length} characters (max_string_length)",
        )
    for char in text:
        code = ord(char)
        if code < 0x20 and char not in _ALLOWED_CONTROLS:
            return "control_character", "contains NUL or another C0 control character"
        if 0xD800 <= code <= 0xDFFF:
            return "lone_surrogate", "contains a lone surrogate (not encodable as UTF-8)"
    return None


def _inspect(  # noqa: PLR0912, PLR0915 - one walk keeps the limits in one place
    value: object, limits: Limits, *, path: str = "", depth: int = 1
) -> _Findings:
    """Walk *value* and report every limit it breaks (up to a few dozen), with paths."""
    findings = _Findings()
    stack: list[tuple[object, str, int]] = [(value, path, depth)]
    used = 0
    while stack and not findings.full:
        node, where, level = stack.pop()
        if used > limits.max_document_bytes:
            findings.error("", "max_bytes", _too_large(limits.max_document_bytes).message)
            break
        if isinstance(node, _OutOfRangeInteger):
            findings.error(where, "integer_range", _integer_message(limits))
            continue
        if isinstance(node, bool) or node is None:
            continue
        if isinstance(node, str):
            used += len(node) + 2
            problem = _string_problem(node, limits.max_string_length)
            if problem is not None:
                findings.error(where, *problem)
            elif not _BIDI_CONTROLS.isdisjoint(node):
                findings.warnings.append(
                    ValidationIssue(where, "bidi_control", "contains a bidirectional override")
                )
            continue
        if isinstance(node, int):
            used += 1
            if not -limits.max_integer <= node <= limits.max_integer:
                findings.error(where, "integer_range", _integer_message(limits))
            continue
        if isinstance(node, float):
            used += 1
            if not math.isfinite(node):
                findings.error(where, "finite_number", "NaN and infinity are not JSON numbers")
            continue
        if not isinstance(node, dict | list):
            findings.error(where, "json_type", f"{type(node).__name__} is not a JSON type")
            continue
        if level > limits.max_depth:
            findings.error(where, "max_depth", _depth_message(limits))
            continue
        used += 2 + len(node)
        if isinstance(node, list):
            if len(node) > limits.max_array_length:
                findings.error(
                    where,
                    "max_array_length",
                    f"array is longer than the limit of {limits.max_array_length} items "
                    "(max_array_length)",
                )
                continue
            stack.extend(
                (child, f"{where}[{index}]", level + 1) for index, child in enumerate(node)
            )
            continue
        if len(node) > limits.max_keys_per_object:
            findings.error(
                where,
                "max_keys",
                f"object has more than the limit of {limits.max_keys_per_object} keys "
                "(max_keys_per_object)",
            )
            continue
        if isinstance(node, _DuplicateKeys):
            findings.error(where, "duplicate_key", "object has the same key more than once")
        for key, child in node.items():
            if not isinstance(key, str):
                findings.error(
                    where, "key_type", f"object key is a {type(key).__name__}, not a str"
                )
                continue
            child_path = _join(where, key)
            key_problem = _string_problem(key, limits.max_string_length)
            if key_problem is not None:
                # Reported, and the value is still walked: sanitize keeps it under a
                # cleaned key, so what it holds must be known.
                findings.error(child_path, key_problem[0], "object key " + key_problem[1])
            if key in POLLUTING_KEYS:
                findings.error(child_path, "polluting_key", "key is refused (prototype pollution)")
                continue
            if level == 1 and key in limits.reserved_keys:
                findings.error(
                    child_path, "reserved_key", "ownership and version belong to the store"
                )
                continue
            used += len(key) + 3
            stack.append((child, child_path, level + 1))
    return findings


def _depth_message(limits: Limits) -> str:
    return f"nested deeper than the limit of {limits.max_depth} levels (max_depth)"


def _integer_message(limits: Limits) -> str:
    return f"integer outside ±{limits.max_integer} (max_integer)"


def _suspicious_bytes(encoded: bytes) -> bool:
    # orjson escapes C0 controls as \u00XX, \b or \f (tab, newline and CR are allowed).
    # A literal backslash followed by such letters also matches: `_inspect` decides.
    return b"\\u00" in encoded or b"\\b" in encoded or b"\\f" in encoded


# -- errors ----------------------------------------------------------------------------


def raise_validation_error(exc: pydantic.ValidationError) -> NoReturn:
    """Raise our `ValidationError` for pydantic's *exc*: paths and rules, never the input."""
    _raise(_issues_of(exc), exc)


def _raise(errors: Sequence[ValidationIssue], cause: BaseException | None = None) -> NoReturn:
    kind = ValidationError
    if any(issue.rule in SIZE_RULES for issue in errors):
        kind = PayloadTooLargeError
    # pydantic's own error shows the input (maybe a secret) when printed: the cause is a
    # copy holding only paths, rules and messages, and *cause* stays out of tracebacks.
    del cause
    raise kind(errors) from _as_pydantic_error(errors)


def _as_pydantic_error(errors: Sequence[ValidationIssue]) -> pydantic.ValidationError:
    """Return *errors* as a pydantic `ValidationError`, so that every refusal has one as
    its ``__cause__`` (the input is left out: it may be the hostile value)."""
    return pydantic.ValidationError.from_exception_data(
        "dashpersist limits",
        [
            InitErrorDetails(
                type=PydanticCustomError(issue.rule, issue.message),
                loc=(issue.path or "$",),
                input=None,
            )
            for issue in errors
        ],
    )


def _issues_of(exc: pydantic.ValidationError, prefix: str = "") -> list[ValidationIssue]:
    issues = []
    for error in exc.errors(include_url=False, include_input=False, include_context=True):
        context = error.get("ctx") or {}
        located = context.get("path")
        if isinstance(located, str):
            path = f"{prefix}.{located}" if prefix else located
        else:
            path = _loc_path(error["loc"], prefix)
        issues.append(ValidationIssue(path, error["type"], error["msg"]))
    return issues


# -- the validator ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _KeyedList:
    """A top-level list of models with an ``id`` (a layout's ``widgets``)."""

    name: str
    item_model: type[BaseModel]
    typed_settings: bool

    @property
    def immutable_items(self) -> bool:
        """Whether an item, once checked, can never change (see `IMMUTABLE_MARKER`)."""
        return bool(self.item_model.__dict__.get(IMMUTABLE_MARKER, False))


@dataclass(frozen=True, slots=True)
class _Checked:
    item: BaseModel
    normalized: bytes  # the canonical JSON of the item's dump
    snapshot: JsonValue  # the input it was made from (a parse of its key)
    output: JsonValue  # the JSON handed out for it: shared, never changed


@dataclass(frozen=True, slots=True, eq=False)
class _CheckedModel:
    """An immutable item model checked before, with the JSON that stands for it."""

    model: BaseModel  # held, so that its id() is not reused while it is remembered
    item: BaseModel  # the model validation made of it (the same, for a valid model)
    plain: JsonValue
    encoded: bytes  # the canonical JSON of plain


_PLAIN = operator.attrgetter("plain")
_ENCODED = operator.attrgetter("encoded")
_ITEM = operator.attrgetter("item")
_NORMALIZED = operator.attrgetter("normalized")
_OUTPUT = operator.attrgetter("output")


def _keyed_lists(schema: type[BaseModel]) -> tuple[_KeyedList, ...]:
    found = []
    for name, info in schema.model_fields.items():
        origin, args = typing.get_origin(info.annotation), typing.get_args(info.annotation)
        if origin is list and len(args) == 1:
            (item,) = args
        elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            item = args[0]
        else:
            continue
        if isinstance(item, type) and issubclass(item, BaseModel) and "id" in item.model_fields:
            typed = "type" in item.model_fields and "settings" in item.model_fields
            found.append(_KeyedList(name, item, typed))
    return tuple(found)


IMMUTABLE_MARKER = "__dashpersist_immutable__"
"""A model class that sets this attribute to ``True`` in its own body promises that its
instances never change, nested values included (`Widget`: frozen, with deep-frozen
settings). `Validator.check_json` then remembers such items by identity, so saving a
layout whose widgets are mostly the objects of the last save checks only the new ones.
Subclasses do not inherit the promise: they may add mutable fields."""


class Validator(Generic[ModelT]):
    """Check untrusted documents against `Limits` and a pydantic schema (default `Layout`).

    Thread-safe. ``allow_unknown_widget_types`` decides whether a widget whose type has no
    registered settings model is accepted (its settings are then any JSON object) or
    refused. ``raw_fields`` (paths such as ``"widgets[*].settings.api_key"``) are never
    rewritten by `sanitize`'s markup stripping: secrets and URLs stay exactly as given.
    Fields marked `dashpersist.encryption.Encrypted` on registered settings models are
    raw too. ``cache_size`` bounds the widgets `check_json` remembers as validated.
    """

    @overload
    def __init__(
        self: Validator[Layout],
        limits: Limits | None = None,
        *,
        allow_unknown_widget_types: bool = True,
        raw_fields: Sequence[str] = (),
        cache_size: int = 4096,
    ) -> None: ...

    @overload
    def __init__(
        self,
        limits: Limits | None = None,
        *,
        schema: type[ModelT],
        allow_unknown_widget_types: bool = True,
        raw_fields: Sequence[str] = (),
        cache_size: int = 4096,
    ) -> None: ...

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        schema: type[BaseModel] = Layout,
        allow_unknown_widget_types: bool = True,
        raw_fields: Sequence[str] = (),
        cache_size: int = 4096,
    ) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, OrderedDict[bytes, _Checked]] = {}
        self._by_identity: OrderedDict[int, _CheckedModel] = OrderedDict()
        # id(plain) -> the entry that handed plain out: see `canonical`.
        self._by_plain: dict[int, _CheckedModel] = {}
        # The shell of the last model checked: its field values (held), JSON and size.
        self._last_shell: tuple[tuple[object, ...], JsonObject, int] | None = None
        self._generation = 0  # see _forget
        self._immutable_schema = bool(schema.__dict__.get(IMMUTABLE_MARKER, False))
        self._cache_size = cache_size
        self._limits = limits or Limits()
        self._allow_unknown_widget_types = allow_unknown_widget_types
        self.schema = cast(type[ModelT], schema)
        self.raw_fields = tuple(raw_fields)
        self._keyed = _keyed_lists(schema)
        self._keyed_names = {keyed.name for keyed in self._keyed}
        shell_fields = [name for name in schema.model_fields if name not in self._keyed_names]
        self._shell_getter: Callable[[BaseModel], tuple[object, ...]] = (
            operator.attrgetter(*shell_fields)
            if len(shell_fields) > 1
            else lambda document: tuple(getattr(document, name) for name in shell_fields)
        )
        self._widget_types: dict[str, type[BaseModel]] = {}

    @property
    def limits(self) -> Limits:
        """The limits every check enforces; setting them forgets what was checked before."""
        return self._limits

    @limits.setter
    def limits(self, limits: Limits) -> None:
        with self._lock:
            self._limits = limits
            self._forget()

    @property
    def allow_unknown_widget_types(self) -> bool:
        """Whether widgets of a type without a registered settings model are accepted."""
        return self._allow_unknown_widget_types

    @allow_unknown_widget_types.setter
    def allow_unknown_widget_types(self, allow: bool) -> None:
        with self._lock:
            self._allow_unknown_widget_types = allow
            self._forget()

    def _forget(self) -> None:
        """Drop the remembered checks (the rules changed); call with the lock held.

        Checks under way keep the rules they started with: what they find is remembered
        only if no `_forget` came meanwhile (the generation they read is still current).
        """
        self._generation += 1
        self._cache.clear()
        self._by_identity.clear()
        self._by_plain.clear()
        self._last_shell = None

    def encrypted_fields(self) -> list[str]:
        """Return the paths marked `Encrypted` on the schema and on registered settings
        models (``widgets[*].settings.api_key``), for `FieldEncryptor`."""
        paths = encrypted_fields(self.schema)
        for keyed in self._keyed:
            if keyed.typed_settings:
                for settings_model in self._widget_types.values():
                    paths += encrypted_fields(settings_model, prefix=f"{keyed.name}[*].settings")
        return list(dict.fromkeys(paths))

    @property
    def widget_types(self) -> Mapping[str, type[BaseModel]]:
        """The registered widget types and their settings models (read-only view)."""
        return dict(self._widget_types)

    def register_widget_type(self, type_name: str, settings_model: type[BaseModel]) -> None:
        """Check the settings of widgets of *type_name* against *settings_model* from now on.

        The settings stay as given (the model is a gate, not a converter); give the model
        ``strict=True`` and ``extra="forbid"`` to refuse coercible or unknown values.
        """
        with self._lock:
            self._widget_types[type_name] = settings_model
            self._forget()

    # -- public checks ------------------------------------------------------------------

    def validate(self, doc: JsonInput) -> ValidationReport:
        """Return a report of everything wrong with *doc*; never raise for bad input.

        Warnings (advice that does not refuse the document): bidirectional overrides in
        strings, widget types without a registered settings model.
        """
        warnings: list[ValidationIssue] = []
        try:
            value, raw = self._load(doc)
            self._finish(value, raw, warnings)
        except ValidationError as exc:
            return ValidationReport(False, exc.issues, tuple(warnings))
        # The precise walk is slow but finds the advice the fast checks skip.
        warnings.extend(_inspect(value, self.limits).warnings)
        return ValidationReport(True, (), tuple(warnings))

    def check(self, doc: JsonInput) -> ModelT:
        """Return *doc* as a validated model, or raise `ValidationError`.

        Raises `PayloadTooLargeError` (a `ValidationError`) when a size limit is hit, and no
        other exception type for any JSON-like input.
        """
        value, raw = self._load(doc)
        return self._finish(value, raw, [])

    def check_json(self, doc: JsonInput) -> JsonObject:
        """Return *doc* validated and normalized as JSON (``check(doc).model_dump(mode="json")``).

        Equivalent to `check`, but widgets this validator has validated before (same
        canonical bytes) are not validated again, so a save in which few widgets changed
        costs little. The result shares nothing with *doc*; it may share unchanged
        widgets with earlier results, so it must not be changed in place (copy it first).
        """
        if type(doc) is self.schema and self._keyed:
            return self._check_model(doc)
        value, raw = self._load(doc)
        if raw is not None or not self._keyed or type(value) is not dict:
            # JSON text is checked whole: duplicate keys show only in the text.
            model = self._finish(value, raw, [])
            return cast(JsonObject, model.model_dump(mode="json"))
        return self._check_incrementally(value)

    def sanitize(self, doc: JsonInput) -> tuple[ModelT, list[ValidationIssue]]:
        """Return a cleaned, valid copy of *doc* and the list of fixes made, each with its path.

        Fixes: markup and event handlers stripped from strings (nh3/Ammonia), control
        characters, lone surrogates and bidirectional overrides removed, over-long strings
        truncated, polluting/ownership/unknown keys dropped; for layouts, invalid and
        duplicate widgets dropped (the first of an id is kept), sizes and positions
        clamped into the grid and overlapping widgets moved down. What cannot be repaired
        (too deep, too large, wrong types) still raises `ValidationError`.
        """
        value, _ = self._load(doc)
        blocking = [
            issue
            for issue in _inspect(value, self.limits).errors
            if issue.rule not in _SANITIZABLE_RULES
        ]
        if blocking:
            _raise(blocking)
        fixes: list[ValidationIssue] = []
        raw_fields = (*self.raw_fields, *self.encrypted_fields())
        cleaner = _Cleaner(self.limits, raw_fields, fixes)
        cleaned = cleaner.clean_document(cast(JsonObject, value), self.schema)
        if issubclass(self.schema, Layout):
            _repair_grid(cleaned, self.limits, fixes)
        return self.check(cleaned), fixes

    # -- internals ----------------------------------------------------------------------

    def _load(self, doc: JsonInput) -> tuple[JsonValue, bytes | None]:
        if isinstance(doc, bytes | bytearray | memoryview | str):
            return _parse_text(doc if isinstance(doc, str) else bytes(doc), self.limits)
        if isinstance(doc, BaseModel):
            return cast(JsonValue, doc.model_dump(mode="json")), None
        return cast(JsonValue, doc), None

    def _finish(
        self, value: JsonValue, raw: bytes | None, warnings: list[ValidationIssue]
    ) -> ModelT:
        self._check_shape(value, raw)
        try:
            model = self.schema.model_validate(value)
        except pydantic.ValidationError as exc:
            _raise(_issues_of(exc), exc)
        for keyed in self._keyed:
            if keyed.typed_settings:
                for index, item in enumerate(getattr(model, keyed.name)):
                    self._check_settings(item, f"{keyed.name}[{index}]", warnings)
        return model

    def _check_shape(
        self, value: JsonValue, raw: bytes | None, *, path: str = "", depth: int = 1
    ) -> bytes:
        """Enforce the limits on *value*, found *depth* levels below the root; *raw* is
        the JSON text it was parsed from, if any. Return *value*'s canonical JSON."""
        summary = _fits(value, self.limits, depth=depth)
        encoded = None if summary is None else _encode(value)
        if encoded is None or _suspicious_bytes(encoded):
            findings = _inspect(value, self.limits, path=path, depth=depth)
            if findings.errors:
                _raise(findings.errors)
            encoded = encoded or _encode(value)
            if encoded is None:  # pragma: no cover - _inspect finds what orjson refuses
                _raise([ValidationIssue(path, "json_encodable", "not representable as JSON")])
        if depth == 1:
            if type(value) is not dict:
                _raise([ValidationIssue(path, "object_type", "a document is a JSON object")])
            self._check_top_level(value)
            if len(encoded) > self.limits.max_document_bytes:
                _raise([_too_large(self.limits.max_document_bytes)])
        if raw is not None and (summary is None or _hides_something(raw, encoded, summary)):
            findings = _inspect(_parse_marked(raw, self.limits.max_integer), self.limits)
            if findings.errors:
                _raise(findings.errors)
        return encoded

    def _check_top_level(self, value: JsonObject) -> None:
        reserved = self.limits.reserved_keys.intersection(value)
        if reserved:
            _raise(
                [
                    ValidationIssue(
                        key, "reserved_key", "ownership and version belong to the store"
                    )
                    for key in sorted(reserved)
                ]
            )
        self._check_item_counts(value)

    def _check_item_counts(self, value: Mapping[str, object]) -> None:
        for keyed in self._keyed:
            items = value.get(keyed.name)
            too_many = isinstance(items, list) and len(items) > self.limits.max_widgets
            if keyed.name == "widgets" and too_many:
                _raise(
                    [
                        ValidationIssue(
                            "widgets",
                            "max_widgets",
                            f"more than the limit of {self.limits.max_widgets} widgets "
                            "(max_widgets)",
                        )
                    ]
                )

    def _check_settings(self, item: BaseModel, path: str, warnings: list[ValidationIssue]) -> None:
        if not self._widget_types and self._allow_unknown_widget_types:
            return  # nothing registered, nothing refused: no rule applies
        type_name = getattr(item, "type", None)
        settings_model = self._widget_types.get(type_name) if isinstance(type_name, str) else None
        if settings_model is None:
            if not self.allow_unknown_widget_types:
                _raise(
                    [
                        ValidationIssue(
                            f"{path}.type", "unknown_widget_type", "no settings model is registered"
                        )
                    ]
                )
            if self._widget_types:
                warnings.append(
                    ValidationIssue(
                        f"{path}.type", "unknown_widget_type", "no settings model is registered"
                    )
                )
            return
        try:
            settings_model.model_validate(getattr(item, "settings", None))
        except pydantic.ValidationError as exc:
            _raise(_issues_of(exc, f"{path}.settings"), exc)

    def _check_incrementally(self, document: JsonObject) -> JsonObject:
        keyed_names = self._keyed_names
        if len(document) > self.limits.max_keys_per_object:
            return self._full(document)
        shell = {key: child for key, child in document.items() if key not in keyed_names}
        self._check_shape(shell, None)
        self._check_top_level(document)
        size = len(_encode(shell) or b"")
        items: dict[str, list[BaseModel]] = {}
        output_items: dict[str, list[JsonValue]] = {}
        for keyed in self._keyed:
            raw_items = document.get(keyed.name)
            if raw_items is None:
                continue
            if type(raw_items) is not list or len(raw_items) > self.limits.max_array_length:
                return self._full(document)
            checked = self._checked_items(keyed, raw_items)
            items[keyed.name] = list(map(_ITEM, checked))
            # Our own parsed copies (shared with earlier results, never with *document*).
            output_items[keyed.name] = list(map(_OUTPUT, checked))
            size += sum(map(len, map(_NORMALIZED, checked))) + len(checked) + 12
        if size > self.limits.max_document_bytes:
            return self._full(document)
        try:
            model = self.schema.model_validate({**shell, **items})
        except pydantic.ValidationError as exc:
            _raise(_issues_of(exc), exc)
        result = cast(JsonObject, model.model_dump(mode="json", exclude=keyed_names))
        result.update(cast(JsonObject, output_items))
        return result

    def _check_model(self, document: ModelT) -> JsonObject:
        """`_check_incrementally` for a model of the schema: its keyed items are models
        already, and immutable ones checked before are known by identity, not dumped.
        For an immutable schema, the rest (the shell) of the last model checked is known
        by the identity of its field values: an edit of a widget leaves them all."""
        generation = self._generation
        keyed_names = self._keyed_names
        shell_values = self._shell_values(document)
        last = self._last_shell
        remembered = (
            shell_values is not None
            and last is not None
            and len(last[0]) == len(shell_values)
            and all(map(operator.is_, last[0], shell_values))
        )
        if remembered and last is not None:
            shell, size = dict(last[1]), last[2]
        else:
            shell = cast(JsonObject, document.model_dump(mode="json", exclude=keyed_names))
            if len(shell) + len(keyed_names) > self.limits.max_keys_per_object:
                return self._full(cast(JsonObject, document.model_dump(mode="json")))
            self._check_shape(shell, None)
            size = len(_encode(shell) or b"")
        shell_size = size
        checked: dict[str, list[_CheckedModel]] = {}
        for keyed in self._keyed:
            models = getattr(document, keyed.name)
            if len(models) > self.limits.max_array_length:
                return self._full(cast(JsonObject, document.model_dump(mode="json")))
            checked[keyed.name] = entries = self._checked_models(keyed, models)
            # Each item's JSON and a separator, and the brackets and key around them.
            size += sum(map(len, map(_ENCODED, entries))) + len(entries) + 12
        output_items = {name: list(map(_PLAIN, entries)) for name, entries in checked.items()}
        if remembered:
            # Its keys passed with these limits (see below): only the item counts are new.
            self._check_item_counts(output_items)
        else:
            self._check_top_level({**shell, **output_items})
        if size > self.limits.max_document_bytes:
            return self._full(cast(JsonObject, document.model_dump(mode="json")))
        if not was_validated(document):
            items = {name: [entry.item for entry in entries] for name, entries in checked.items()}
            try:
                # The rules across items and fields (unique ids, the grid): the model may
                # have been built without validation (model_construct, model_copy).
                self.schema.model_validate({**shell, **items})
            except pydantic.ValidationError as exc:
                _raise(_issues_of(exc), exc)
        if shell_values is not None and not remembered:
            # Remembered only once every check of it passed, under rules still in force.
            with self._lock:
                if self._generation == generation:
                    self._last_shell = (shell_values, dict(shell), shell_size)
        shell.update(output_items)
        return shell

    def _shell_values(self, document: BaseModel) -> tuple[object, ...] | None:
        """The values of *document*'s fields outside its keyed lists, when its class
        promises immutability (see `IMMUTABLE_MARKER`) and it holds no extra fields."""
        if not self._immutable_schema or document.__pydantic_extra__:
            return None
        return self._shell_getter(document)

    def _checked_models(
        self, keyed: _KeyedList, models: Sequence[BaseModel]
    ) -> list[_CheckedModel]:
        generation = self._generation
        remembered = keyed.immutable_items
        by_identity = self._by_identity
        if remembered:
            # An entry holds its model, so no other live object can have that id.
            with self._lock:
                found = list(map(by_identity.get, map(id, models)))
        else:
            found = [None] * len(models)
        if None not in found:  # identity comparisons only: _CheckedModel has no __eq__
            return cast(list[_CheckedModel], found)
        missing = list(compress(count(), map(operator.is_, found, repeat(None))))
        # One dump for every new item: a dump call per item costs several times more.
        dumped = cast(
            list[JsonValue],
            _list_adapter(keyed.item_model).dump_python(
                [models[index] for index in missing], mode="json"
            ),
        )
        checked: dict[int, _Checked] = {}
        unproven: list[int] = []
        for index, item in zip(missing, dumped, strict=True):
            model = models[index]
            if remembered and type(model) is keyed.item_model and was_validated(model):
                path = f"{keyed.name}[{index}]"
                checked[index] = self._checked_valid_model(keyed, path, model, item)
            else:
                unproven.append(index)
        if unproven:
            by_position = dict(zip(missing, dumped, strict=True))
            checked.update(
                zip(
                    unproven,
                    self._checked_items(
                        keyed, [by_position[index] for index in unproven], indices=unproven
                    ),
                    strict=True,
                )
            )
        for index in missing:
            model, entry_checked = models[index], checked[index]
            entry = _CheckedModel(
                model,
                entry_checked.item,
                entry_checked.output,  # the validator's copy: shared by every save holding it
                entry_checked.normalized,
            )
            found[index] = entry
            if remembered and type(model) is keyed.item_model and self._cache_size > 0:
                with self._lock:
                    if self._generation != generation:
                        continue  # checked under rules changed since: not remembered
                    by_identity[id(model)] = entry
                    self._by_plain[id(entry.plain)] = entry
                    while len(by_identity) > self._cache_size:
                        _, old = by_identity.popitem(last=False)  # the oldest first
                        if self._by_plain.get(id(old.plain)) is old:
                            del self._by_plain[id(old.plain)]
        return cast(list[_CheckedModel], found)

    def canonical(self, document: JsonObject) -> bytes:
        """Return ``canonical_json(document)``, built from the canonical JSON this validator
        keeps of the items it handed out, where *document*'s keyed lists hold those.

        A save of a layout model mostly holds widgets checked before, whose JSON the
        validator has: joining it spares encoding (and sorting) the whole document again.
        Other items (new objects, such as widgets with encrypted fields) are encoded one
        by one. Items handed out are taken to be unchanged since, as every stored form is.
        """
        with self._lock:
            looked_up = []
            for keyed in self._keyed:
                items = document.get(keyed.name)
                if type(items) is not list:
                    return canonical_json(document)
                looked_up.append((keyed.name, items, list(map(self._by_plain.get, map(id, items)))))
        fragments: dict[str, orjson.Fragment] = {}
        for name, items, entries in looked_up:
            if None not in entries and not any(map(operator.is_not, map(_PLAIN, entries), items)):
                parts = list(map(_ENCODED, entries))
            else:
                parts = []
                for item, entry in zip(items, entries, strict=True):
                    if entry is not None and entry.plain is item:
                        parts.append(entry.encoded)
                        continue
                    part = _encode(item)
                    if part is None or (b"null" in part and has_non_finite(item)):
                        return canonical_json(document)  # which raises what it should
                    parts.append(part)
            fragments[name] = orjson.Fragment(b"[" + b",".join(parts) + b"]")
        shell = {key: value for key, value in document.items() if key not in fragments}
        if not fragments or has_non_finite(shell):
            return canonical_json(document)  # which refuses NaN and infinities
        try:
            return orjson.dumps({**shell, **fragments}, option=_SORTED)
        except (orjson.JSONEncodeError, TypeError):
            return canonical_json(document)  # raises the ValidationError it deserves

    def _checked_valid_model(
        self, keyed: _KeyedList, path: str, model: BaseModel, item: JsonValue
    ) -> _Checked:
        """Check an item model validation built against what it cannot know: the limits
        and the registered settings models. Its dump is its normalized form."""
        normalized = self._check_shape(item, None, path=path, depth=3)
        if keyed.typed_settings:
            self._check_settings(model, path, [])
        return _Checked(model, normalized, item, item)

    def _full(self, document: JsonObject) -> JsonObject:
        return cast(JsonObject, self._finish(document, None, []).model_dump(mode="json"))

    def _checked_items(
        self, keyed: _KeyedList, items: list[JsonValue], *, indices: Sequence[int] | None = None
    ) -> list[_Checked]:
        """Check *items* of a keyed list (at *indices* of it, by default 0, 1, ...)."""
        try:
            # Items that are no objects encode too; no cache entry has their key.
            keys: list[bytes | None] = [
                orjson.dumps(item, option=_ITEM_KEY_OPTIONS) for item in items
            ]
        except (orjson.JSONEncodeError, TypeError):
            keys = [_item_key(item) for item in items]
        cache = self._cache.get(keyed.name)
        if cache is None:
            cache = self._cache.setdefault(keyed.name, OrderedDict())
        # C-level maps: None keys (items that cannot be keys) find nothing, move nothing.
        get = cast(Callable[[bytes | None], _Checked | None], cache.get)
        move_to_end = cast(Callable[[bytes | None], None], cache.move_to_end)
        with self._lock:
            found = list(map(get, keys))
            collections.deque(map(move_to_end, compress(keys, found)), maxlen=0)
        return [
            hit
            # The bytes match; equality also rules out what orjson encodes like JSON but
            # is not JSON (NaN as null, tuples as arrays, enums and UUIDs as values).
            if hit is not None and hit.snapshot == item
            else self._checked_item(keyed, f"{keyed.name}[{index}]", item, key, cache)
            for index, item, key, hit in zip(
                range(len(items)) if indices is None else indices, items, keys, found, strict=True
            )
        ]

    def _checked_item(
        self,
        keyed: _KeyedList,
        path: str,
        item: JsonValue,
        key: bytes | None,
        cache: OrderedDict[bytes, _Checked],
    ) -> _Checked:
        self._check_shape(item, None, path=path, depth=3)
        try:
            model = keyed.item_model.model_validate(item)
        except pydantic.ValidationError as exc:
            _raise(_issues_of(exc, path), exc)
        if keyed.typed_settings:
            self._check_settings(model, path, [])
        normalized = orjson.dumps(model.model_dump(mode="json"), option=_SORTED)
        snapshot = orjson.loads(key or b"null")
        # The input, when it was the normalized form already; else a parse of that.
        output = snapshot if normalized == key else orjson.loads(normalized)
        entry = _Checked(model, normalized, snapshot, output)
        if key is not None and self._cache_size > 0:
            with self._lock:
                cache[key] = entry
                while len(cache) > self._cache_size:
                    cache.popitem(last=False)
        return entry


@functools.cache
def _list_adapter(item_model: type[BaseModel]) -> pydantic.TypeAdapter[list[BaseModel]]:
    return pydantic.TypeAdapter(list[item_model])  # type: ignore[valid-type]


def _item_key(item: JsonValue) -> bytes | None:
    if type(item) is not dict:
        return None
    try:
        return orjson.dumps(item, option=_ITEM_KEY_OPTIONS)
    except (orjson.JSONEncodeError, TypeError):
        return None


def _encode(value: JsonValue) -> bytes | None:
    try:
        return orjson.dumps(value, option=_SORTED)
    except (orjson.JSONEncodeError, TypeError):
        return None


def _hides_something(raw: bytes, encoded: bytes, summary: _Summary) -> bool:
    """Return whether JSON text may hold what orjson's parse hid: a duplicate key (the
    last one wins) or an integer beyond 64 bits (widened to a float)."""
    if summary.has_large_float:
        return True
    colons = raw.count(b":")
    if colons == summary.keys:
        return False
    if b"\\u" not in raw:
        # Without escapes, every colon of the text is in the re-encoding unless a
        # duplicate key (and its value) was dropped.
        return colons != encoded.count(b":")
    return True


# -- sanitizing ------------------------------------------------------------------------

_SANITIZABLE_RULES = frozenset(
    {"max_string_length", "control_character", "lone_surrogate", "polluting_key", "reserved_key"}
)


def _path_matches(pattern: str, path: str) -> bool:
    """Return whether a concrete path (``widgets[3].settings.api_key``) matches a pattern
    (``widgets[*].settings.api_key``)."""
    pattern_parts = pattern.replace("[*]", ".*").split(".")
    parts = path.replace("[", ".[").split(".")
    if len(parts) != len(pattern_parts):
        return False
    return all(
        want == got or (want == "*" and got.startswith("["))
        for want, got in zip(pattern_parts, parts, strict=True)
    )


class _Cleaner:
    """Rewrite strings and keys of one document, recording each fix."""

    def __init__(
        self, limits: Limits, raw_fields: Sequence[str], fixes: list[ValidationIssue]
    ) -> None:
        self.limits = limits
        self.raw_fields = raw_fields
        self.fixes = fixes

    def fix(self, path: str, rule: str, message: str) -> None:
        self.fixes.append(ValidationIssue(path, rule, message))

    def clean_document(self, value: JsonObject, schema: type[BaseModel]) -> JsonObject:
        if type(value) is not dict:
            _raise([ValidationIssue("", "object_type", "a document is a JSON object")])
        extra_forbidden = schema.model_config.get("extra") == "forbid"
        result: JsonObject = {}
        for key, child in value.items():
            if key in self.limits.reserved_keys:
                self.fix(key, "reserved_key", "dropped: ownership and version belong to the store")
            elif extra_forbidden and key not in schema.model_fields:
                self.fix(_join("", key), "unknown_field", "dropped: not a field of the document")
            else:
                result[key] = child
        return cast(JsonObject, self.clean(result, ""))

    def clean(self, value: JsonValue, path: str) -> JsonValue:
        if isinstance(value, str):
            return self.clean_string(value, path)
        if isinstance(value, list):
            return [self.clean(child, f"{path}[{index}]") for index, child in enumerate(value)]
        if isinstance(value, dict):
            result: dict[str, JsonValue] = {}
            for key, child in value.items():
                if not isinstance(key, str):
                    _raise([ValidationIssue(path, "key_type", "object key is not a str")])
                if key in POLLUTING_KEYS:
                    self.fix(_join(path, key), "polluting_key", "dropped (prototype pollution)")
                    continue
                clean_key = _strip_controls(key)[: self.limits.max_string_length]
                if clean_key != key:
                    if clean_key in value or clean_key in result:
                        self.fix(
                            path, "control_character", "dropped a key that collides when cleaned"
                        )
                        continue
                    self.fix(_join(path, clean_key), "control_character", "cleaned the key")
                result[clean_key] = self.clean(child, _join(path, clean_key))
            return result
        return value

    def _is_raw(self, path: str) -> bool:
        return any(_path_matches(raw, path) for raw in self.raw_fields)

    def clean_string(self, text: str, path: str) -> str:
        result = _strip_controls(text)
        if result != text:
            self.fix(path, "control_character", "removed control, surrogate or bidi characters")
        if ("<" in result or "&" in result) and not self._is_raw(path):
            stripped = _strip_markup(result)
            if stripped != result:
                self.fix(path, "markup", "removed markup")
                result = stripped
        cap = self.limits.max_string_length
        if len(result) > cap:
            self.fix(
                path, "max_string_length", f"truncated to {cap} characters (max_string_length)"
            )
            result = result[:cap]
        return result


def _strip_controls(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(
        char
        for char in text
        if char in _ALLOWED_CONTROLS
        or not (ord(char) < 0x20 or 0xD800 <= ord(char) <= 0xDFFF or char in _BIDI_CONTROLS)
    )


def _strip_markup(text: str) -> str:
    """Return *text* as plain text: every tag (and script/style content) removed and
    character references decoded (``&amp;`` becomes ``&``)."""
    current = text
    # Ammonia emits HTML (``&`` as ``&amp;``); unescaping gives text back, and may reveal
    # escaped markup (``&lt;script&gt;``), hence the loop until nothing changes.
    for _ in range(4):
        cleaned = html.unescape(nh3.clean(current, tags=set())).strip()
        if cleaned == current:
            break
        current = cleaned
    return current


def _as_int(value: JsonValue) -> int | None:
    return value if type(value) is int else None


def _repair_grid(layout: JsonObject, limits: Limits, fixes: list[ValidationIssue]) -> None:
    """Make widgets valid, unique and inside the grid, then move overlapping ones down."""
    columns = _as_int(layout.get("columns", 12))
    if columns is None or not 1 <= columns <= 1000:
        fixes.append(ValidationIssue("columns", "columns", "reset to 12"))
        columns = layout["columns"] = 12
    widgets = layout.get("widgets", [])
    if not isinstance(widgets, list):
        fixes.append(ValidationIssue("widgets", "list_type", "replaced by an empty list"))
        widgets = []
    kept: list[JsonObject] = []
    kept_paths: list[str] = []
    seen: set[str] = set()
    for index, item in enumerate(widgets):
        path = f"widgets[{index}]"
        widget_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not isinstance(widget_id, str) or not _ID.match(widget_id):
            fixes.append(
                ValidationIssue(path, "invalid_widget", "dropped: not a widget with a valid id")
            )
            continue
        if widget_id in seen:
            fixes.append(
                ValidationIssue(
                    path, "duplicate_widget_id", "dropped: the first widget keeps the id"
                )
            )
            continue
        if len(kept) >= limits.max_widgets:
            fixes.append(
                ValidationIssue(path, "max_widgets", f"dropped: over {limits.max_widgets} widgets")
            )
            continue
        seen.add(widget_id)
        widget = {key: child for key, child in item.items() if key in Widget.model_fields}
        if len(widget) != len(item):
            fixes.append(
                ValidationIssue(path, "unknown_field", "dropped fields Widget does not have")
            )
        _fit_widget(widget, columns, path, fixes)
        kept.append(widget)
        kept_paths.append(path)
    _move_overlaps_down(kept, kept_paths, fixes)
    layout["widgets"] = cast(JsonValue, kept)


def _fit_widget(widget: JsonObject, columns: int, path: str, fixes: list[ValidationIssue]) -> None:
    for name, low in (("w", 1), ("h", 1), ("x", 0), ("y", 0)):
        given = widget.get(name, low)
        value = _as_int(given)
        fixed = low if value is None else max(low, value)
        if name == "w":
            fixed = min(fixed, columns)
        elif name == "x":
            fixed = min(fixed, columns - cast(int, widget["w"]))
        widget[name] = fixed
        if fixed != given or type(given) is not int:
            fixes.append(ValidationIssue(f"{path}.{name}", "grid", f"{name} moved into the grid"))


def _move_overlaps_down(
    widgets: list[JsonObject], paths: list[str], fixes: list[ValidationIssue]
) -> None:
    # Earlier widgets keep their place; a later one that overlaps any placed widget moves
    # below every placed widget sharing its columns: one pass, O(n^2) for n widgets.
    placed: list[tuple[int, int, int, int]] = []
    for path, widget in zip(paths, widgets, strict=True):
        x, y, w, h = (cast(int, widget[name]) for name in ("x", "y", "w", "h"))
        sharing = [(py, ph) for px, py, pw, ph in placed if px < x + w and x < px + pw]
        if any(py < y + h and y < py + ph for py, ph in sharing):
            y = max(py + ph for py, ph in sharing)
            widget["y"] = y
            fixes.append(
                ValidationIssue(f"{path}.y", "overlap", "moved down below an overlapping widget")
            )
        placed.append((x, y, w, h))


_ID = re.compile(ID_PATTERN)

_DEFAULT: Validator[Layout] | None = None


def _default() -> Validator[Layout]:
    global _DEFAULT  # noqa: PLW0603 - one shared default, created on first use
    if _DEFAULT is None:
        _DEFAULT = Validator()
    return _DEFAULT


def validate(doc: JsonInput) -> ValidationReport:
    """Return the report of a default `Validator` (default `Limits`, schema `Layout`)."""
    return _default().validate(doc)


def sanitize(doc: JsonInput) -> tuple[Layout, list[ValidationIssue]]:
    """Return a cleaned `Layout` and its fixes, by a default `Validator` (see its `sanitize`)."""
    return _default().sanitize(doc)
