"""Validator: limits, hostile values (S17, S18), strings and Unicode (S19), widget types."""

from __future__ import annotations

import operator
import time
import tracemalloc
from collections.abc import Mapping
from typing import Annotated, cast

import orjson
import pydantic
import pytest
from pydantic import BaseModel, ConfigDict, Field

from dashpersist._canonical import canonical_json, copy_json
from dashpersist.encryption import Encrypted
from dashpersist.errors import PayloadTooLargeError, ValidationError
from dashpersist.models import Layout, Widget
from dashpersist.types import JsonObject, JsonValue
from dashpersist.validation import Limits, Validator, validate

CAP = Limits().max_document_bytes


def layout_with(count: int) -> JsonObject:
    return {
        "widgets": [
            {
                "id": f"w{index}",
                "type": "chart",
                "title": f"Sales {index}",
                "x": (index * 3) % 12,
                "y": index,
                "w": 3,
                "h": 2,
                "settings": {"color": "#ff0000", "limit": 10},
            }
            for index in range(count)
        ],
        "theme": "dark",
        "columns": 12,
    }


def nested(depth: int, *, kind: str) -> JsonValue:
    value: JsonValue = 1
    for _ in range(depth):
        value = [value] if kind == "array" else {"a": value}
    return value


def refusal(doc: object, validator: Validator[Layout] | None = None) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        (validator or Validator()).check(doc)  # type: ignore[arg-type]
    return caught.value


# -- valid documents ------------------------------------------------------------------


def test_a_valid_layout_becomes_a_model_with_its_values() -> None:
    doc = layout_with(3)

    model = Validator().check(doc)

    assert isinstance(model, Layout)
    assert [widget.id for widget in model.widgets] == ["w0", "w1", "w2"]
    assert model.model_dump(mode="json")["widgets"][1] == doc["widgets"][1]  # type: ignore[index]


def test_json_text_and_bytes_validate_like_the_dict() -> None:
    doc = layout_with(2)

    from_text = Validator().check(orjson.dumps(doc).decode())
    from_bytes = Validator().check(orjson.dumps(doc))

    assert from_text == from_bytes == Validator().check(doc)


def test_a_model_instance_is_checked_against_the_limits_too() -> None:
    doc = layout_with(1)
    doc["widgets"][0]["settings"]["note"] = "x" * 10_001  # type: ignore[call-overload,index]
    layout = Layout.model_validate(doc)

    error = refusal(layout)

    assert error.issues[0].rule == "max_string_length"


def test_validate_reports_instead_of_raising() -> None:
    report = validate({"widgets": [{"id": "w1", "type": "chart", "x": -1}]})

    assert not report.valid
    assert report.errors[0].path == "widgets[0].x"
    assert report.errors[0].rule == "greater_than_equal"


def test_validate_accepts_a_valid_document_with_no_errors() -> None:
    report = validate(layout_with(5))

    assert report.valid
    assert report.errors == ()


# -- model rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("widget", "path", "rule"),
    [
        ({"id": "w1", "type": "chart", "w": 0}, "widgets[0].w", "greater_than_equal"),
        ({"id": "w1", "type": "chart", "h": 0}, "widgets[0].h", "greater_than_equal"),
        ({"id": "w1", "type": "chart", "y": -1}, "widgets[0].y", "greater_than_equal"),
        ({"id": "w1", "type": "chart", "x": 10, "w": 3}, "widgets[0]", "widget_outside_grid"),
        ({"id": "w1", "type": "chart", "x": "3"}, "widgets[0].x", "int_type"),
        ({"id": "w1", "type": "chart", "x": True}, "widgets[0].x", "int_type"),
        ({"id": "", "type": "chart"}, "widgets[0].id", "string_pattern_mismatch"),
        ({"id": "a" * 129, "type": "chart"}, "widgets[0].id", "string_pattern_mismatch"),
        ({"id": "../x", "type": "chart"}, "widgets[0].id", "string_pattern_mismatch"),
        ({"id": "..", "type": "chart"}, "widgets[0].id", "string_pattern_mismatch"),
        ({"id": "w1", "type": "chart", "colour": "red"}, "widgets[0].colour", "extra_forbidden"),
    ],
)
def test_widget_rules_are_refused_with_the_path_and_rule(
    widget: JsonObject, path: str, rule: str
) -> None:
    error = refusal({"widgets": [widget]})

    assert (error.issues[0].path, error.issues[0].rule) == (path, rule)
    assert isinstance(error.__cause__, pydantic.ValidationError)


def test_ids_of_128_safe_characters_are_accepted() -> None:
    widget_id = "A" + "b-_.@9" * 21 + "z"

    model = Validator().check({"widgets": [{"id": widget_id, "type": "chart"}]})

    assert len(widget_id) == 128
    assert model.widgets[0].id == widget_id


def test_duplicate_widget_ids_are_refused_at_the_second_widget() -> None:
    doc = {"widgets": [{"id": "w1", "type": "a"}, {"id": "w1", "type": "b"}]}

    error = refusal(doc)

    assert error.issues[0].path == "widgets[1].id"
    assert error.issues[0].rule == "duplicate_widget_id"


def test_messages_never_echo_the_refused_value() -> None:
    secret = "hunter2-very-secret"
    docs = [
        {"widgets": [{"id": "w1", "type": "chart", "x": secret}]},
        {"theme": secret + "\x00"},
        {"theme": secret * 1000},
        {"metadata": {"a": float("nan")}, "theme": secret},
    ]

    errors = [refusal(doc) for doc in docs]

    for error in errors:
        assert secret not in str(error)
        assert all(secret not in str(issue) for issue in error.issues)


# -- S17: oversized and deeply nested -------------------------------------------------


def bounded(doc: object) -> tuple[ValidationError, float, int]:
    started = time.perf_counter()
    tracemalloc.start()
    try:
        with pytest.raises(ValidationError) as caught:
            Validator().check(doc)  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return caught.value, time.perf_counter() - started, peak


@pytest.mark.parametrize("kind", ["array", "object"])
@pytest.mark.parametrize("as_text", [False, True], ids=["python", "json-text"])
def test_depth_10000_is_refused_quickly_naming_the_depth_limit(kind: str, as_text: bool) -> None:
    value = nested(10_000, kind=kind)
    doc: object = {"metadata": {"deep": value}}
    if as_text:
        doc = b'{"metadata":{"deep":' + (b"[" if kind == "array" else b'{"a":') * 10_000
        doc += b"1" + (b"]" if kind == "array" else b"}") * 10_000 + b"}}"

    error, seconds, peak = bounded(doc)

    assert error.issues[0].rule == "max_depth"
    assert "32" in str(error)
    assert seconds < 1.0
    assert peak < 4 * CAP


@pytest.mark.parametrize("kind", ["array", "object"])
def test_depth_is_enforced_on_both_sides_of_the_limit(kind: str) -> None:
    # The root object is level 1 and metadata level 2: 30 more containers reach 32.
    at_limit = {"metadata": {"x": nested(30, kind=kind)}}
    over_limit = {"metadata": {"x": nested(31, kind=kind)}}

    Validator().check(at_limit)
    error = refusal(over_limit)

    assert error.issues[0].rule == "max_depth"


@pytest.mark.parametrize(
    ("doc", "rule"),
    [
        (b'{"metadata":{"a":"' + b"x" * 50_000_000 + b'"}}', "max_bytes"),
        ({"metadata": {f"k{i}": i for i in range(100_000)}}, "max_keys"),
        ({"metadata": {"numbers": list(range(1_000_000))}}, "max_array_length"),
        ({"widgets": [{"id": f"w{i}", "type": "t"} for i in range(100_000)]}, "max_array_length"),
        ({"widgets": [{"id": "w1", "type": "t", "title": "x" * 20_000_000}]}, "max_string_length"),
        ({"metadata": {f"k{i}": "x" * 5_000 for i in range(800)}}, "max_bytes"),
    ],
    ids=["50MB-text", "100k-keys", "1M-numbers", "100k-widgets", "20MB-title", "4MB-dict"],
)
def test_oversized_documents_raise_payload_too_large_quickly_naming_the_limit(
    doc: object, rule: str
) -> None:
    error, seconds, peak = bounded(doc)

    assert isinstance(error, PayloadTooLargeError)
    assert error.issues[0].rule == rule
    assert "limit of" in error.issues[0].message
    assert seconds < 1.0
    assert peak < 4 * CAP


def test_more_widgets_than_the_widget_limit_are_refused() -> None:
    doc = {"widgets": [{"id": f"w{i}", "type": "t"} for i in range(501)]}

    error = refusal(doc)

    assert isinstance(error, PayloadTooLargeError)
    assert error.issues[0].rule == "max_widgets"
    assert "500" in error.issues[0].message


def test_limits_are_configurable() -> None:
    validator = Validator(Limits(max_widgets=2, max_string_length=8))

    widgets_error = refusal(layout_with(3), validator)
    string_error = refusal({"theme": "abcdefghi"}, validator)

    assert widgets_error.issues[0].rule == "max_widgets"
    assert string_error.issues[0].message.startswith("string is longer than the limit of 8")


def test_document_bytes_are_checked_on_the_encoding() -> None:
    validator = Validator(Limits(max_document_bytes=1_000))
    doc = {"metadata": {f"k{i}": "x" * 50 for i in range(30)}}

    error = refusal(doc, validator)

    assert error.issues[0].rule == "max_bytes"


# -- S18: hostile values --------------------------------------------------------------

HOSTILE_TEXT = {
    "NaN": (b'{"metadata":{"a":NaN}}', "finite_number"),
    "Infinity": (b'{"metadata":{"a":Infinity}}', "finite_number"),
    "-Infinity": (b'{"metadata":{"a":-Infinity}}', "finite_number"),
    "1e400": (b'{"metadata":{"a":1e400}}', "finite_number"),
    "10**5000": (b'{"metadata":{"a":1' + b"0" * 5000 + b"}}", "finite_number"),
    "2**53": (b'{"metadata":{"a":9007199254740992}}', "integer_range"),
    "30 digits": (b'{"metadata":{"a":-123456789012345678901234567890}}', "integer_range"),
    "duplicate key": (b'{"theme":"a","theme":"b"}', "duplicate_key"),
    "nested duplicate": (b'{"metadata":{"a":"x:y","a":"\\u003a"}}', "duplicate_key"),
    "unknown field": (b'{"bogus":1}', "extra_forbidden"),
    "__proto__": (b'{"metadata":{"__proto__":{"admin":true}}}', "polluting_key"),
    "constructor": (b'{"filters":{"constructor":1}}', "polluting_key"),
    "prototype": (b'{"metadata":{"x":[{"prototype":1}]}}', "polluting_key"),
    "user_id": (b'{"user_id":"bob"}', "reserved_key"),
    "version": (b'{"version":7}', "reserved_key"),
    "tenant": (b'{"tenant":"acme"}', "reserved_key"),
}


@pytest.mark.parametrize(("text", "rule"), HOSTILE_TEXT.values(), ids=HOSTILE_TEXT.keys())
def test_hostile_json_text_is_refused_with_a_pydantic_cause(text: bytes, rule: str) -> None:
    error = refusal(text)

    assert error.issues[0].rule == rule
    assert isinstance(error.__cause__, pydantic.ValidationError)


HOSTILE_VALUES: dict[str, tuple[object, str]] = {
    "NaN": ({"metadata": {"a": float("nan")}}, "finite_number"),
    "Infinity": ({"metadata": {"a": float("inf")}}, "finite_number"),
    "-Infinity": ({"filters": {"a": [float("-inf")]}}, "finite_number"),
    "10**5000": ({"metadata": {"a": 10**5000}}, "integer_range"),
    "2**53": ({"metadata": {"a": 2**53}}, "integer_range"),
    "-(2**64)": ({"widgets": [{"id": "w", "type": "t", "y": -(2**64)}]}, "integer_range"),
    "int key": ({"metadata": {1: "a"}}, "key_type"),
    "int and str key": ({"metadata": {1: "a", "1": "b"}}, "key_type"),
    "tuple": ({"metadata": {"a": (1, 2)}}, "json_type"),
    "bytes": ({"metadata": {"a": b"x"}}, "json_type"),
    "__proto__": ({"metadata": {"__proto__": 1}}, "polluting_key"),
    "user_id": ({"user_id": "bob"}, "reserved_key"),
    "not an object": ([1, 2], "object_type"),
}


@pytest.mark.parametrize(("doc", "rule"), HOSTILE_VALUES.values(), ids=HOSTILE_VALUES.keys())
def test_hostile_python_values_are_refused_with_a_pydantic_cause(doc: object, rule: str) -> None:
    error = refusal(doc)

    assert error.issues[0].rule == rule
    assert isinstance(error.__cause__, pydantic.ValidationError)


def test_largest_safe_integers_are_accepted() -> None:
    doc = {"metadata": {"max": 2**53 - 1, "min": -(2**53) + 1, "big_float": 1e300}}

    model = Validator().check(doc)

    assert model.metadata == doc["metadata"]


# -- S19: strings and Unicode ---------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "rule"),
    [
        ("Sales \ud800", "lone_surrogate"),
        ("Sales \x00", "control_character"),
        ("Sales \x07", "control_character"),
        ("Sales \x1b[31m", "control_character"),
    ],
)
@pytest.mark.parametrize("as_text", [False, True], ids=["python", "json-text"])
def test_surrogates_nul_and_control_characters_are_refused(
    title: str, rule: str, as_text: bool
) -> None:
    doc: JsonObject = {"widgets": [{"id": "w1", "type": "t", "title": title}]}
    source: object = doc
    if as_text:
        escaped = title.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")
        source = (
            '{"widgets":[{"id":"w1","type":"t","title":"'
            + "".join(
                f"\\u{ord(ch):04x}" if ord(ch) < 0x20 or ord(ch) >= 0xD800 else ch for ch in escaped
            )
            + '"}]}'
        )

    error = refusal(source)

    assert error.issues[0].rule == rule


def test_tab_newline_and_carriage_return_are_allowed_in_text() -> None:
    model = Validator().check({"theme": "a\tb\nc\r\n"})

    assert model.theme == "a\tb\nc\r\n"


@pytest.mark.parametrize(
    "title",
    ["line\u2028separator\u2029", "👨\u200d👩\u200d👧\u200d👦 family", "Cafe\u0301", "Café"],
    ids=["U+2028", "emoji-zwj", "nfd", "nfc"],
)
def test_allowed_unicode_round_trips_exactly(title: str) -> None:
    doc = {"widgets": [{"id": "w1", "type": "t", "title": title}]}

    from_dict = Validator().check(doc)
    from_text = Validator().check(orjson.dumps(doc))

    assert from_dict.widgets[0].title == title
    assert from_text.widgets[0].title == title
    assert orjson.loads(orjson.dumps(from_dict.model_dump(mode="json"))) == {
        **Layout().model_dump(mode="json"),
        **from_dict.model_dump(mode="json"),
    }


def test_string_cap_is_enforced_one_character_over_with_the_limit_in_the_message() -> None:
    at_cap = {"widgets": [{"id": "w1", "type": "t", "title": "x" * 10_000}]}
    over_cap = {"widgets": [{"id": "w1", "type": "t", "title": "x" * 10_001}]}

    Validator().check(at_cap)
    error = refusal(over_cap)

    assert error.issues[0].path == "widgets[0].title"
    assert "10000" in error.issues[0].message


def test_a_bidi_override_is_accepted_with_a_warning() -> None:
    report = validate({"widgets": [{"id": "w1", "type": "t", "title": "abc\u202edef"}]})

    assert report.valid
    assert [(w.path, w.rule) for w in report.warnings] == [("widgets[0].title", "bidi_control")]


# -- widget types and generic schemas -------------------------------------------------


class ChartSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    metric: str
    limit: int = 10
    api_key: Annotated[str, Encrypted] = ""


def test_registered_widget_settings_are_checked_with_the_settings_path() -> None:
    validator = Validator()
    validator.register_widget_type("chart", ChartSettings)
    good = {"widgets": [{"id": "w1", "type": "chart", "settings": {"metric": "sales"}}]}
    bad = {"widgets": [{"id": "w1", "type": "chart", "settings": {"metric": 3}}]}

    validator.check(good)
    error = refusal(bad, validator)

    assert error.issues[0].path == "widgets[0].settings.metric"
    assert isinstance(error.__cause__, pydantic.ValidationError)


def test_unknown_widget_types_are_refused_when_configured() -> None:
    strict = Validator(allow_unknown_widget_types=False)
    strict.register_widget_type("chart", ChartSettings)
    lenient = Validator()
    lenient.register_widget_type("chart", ChartSettings)
    doc = {"widgets": [{"id": "w1", "type": "map", "settings": {"zoom": 3}}]}

    error = refusal(doc, strict)
    report = lenient.validate(doc)

    assert error.issues[0].rule == "unknown_widget_type"
    assert report.valid
    assert report.warnings[0].rule == "unknown_widget_type"


def test_encrypted_marks_on_settings_models_become_field_paths() -> None:
    validator = Validator()
    validator.register_widget_type("chart", ChartSettings)

    assert validator.encrypted_fields() == ["widgets[*].settings.api_key"]


class Preferences(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    language: str = "en"
    favourites: list[str] = []
    extra: dict[str, JsonValue] = {}


def test_a_host_schema_gets_the_same_limits() -> None:
    validator = Validator(schema=Preferences)

    model = validator.check({"language": "de", "favourites": ["a"]})
    error = refusal({"extra": {"x": nested(40, kind="array")}}, validator)  # type: ignore[arg-type]

    assert isinstance(model, Preferences)
    assert model.language == "de"
    assert error.issues[0].rule == "max_depth"


# -- check_json: the save path --------------------------------------------------------


def test_check_json_equals_the_dump_of_check() -> None:
    validator = Validator()
    doc = {"widgets": [{"id": "extra", "type": "t"}, *layout_with(3)["widgets"]]}  # type: ignore[misc]

    normalized = validator.check_json(doc)

    assert normalized == validator.check(doc).model_dump(mode="json")
    assert cast(list[JsonObject], normalized["widgets"])[0] == {
        "id": "extra",
        "type": "t",
        "title": "",
        "x": 0,
        "y": 0,
        "w": 1,
        "h": 1,
        "settings": {},
    }


def test_check_json_revalidates_a_cached_widget_in_a_new_context() -> None:
    validator = Validator()
    doc = layout_with(4)
    validator.check_json(doc)
    narrower = {**doc, "columns": 4}

    error = refusal_json(narrower, validator)

    assert error.issues[0].rule == "widget_outside_grid"


def refusal_json(doc: Mapping[str, object], validator: Validator[Layout]) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        validator.check_json(doc)
    return caught.value


@pytest.mark.parametrize(
    "changed",
    [
        {"settings": {"a": float("nan")}},
        {"settings": {"a": (1, 2)}},
        {"x": 1.0},
        {"x": True},
        {"title": "\x00"},
        {"y": 2**60},
    ],
    ids=["nan", "tuple", "float-x", "bool-x", "nul", "huge-int"],
)
def test_check_json_never_takes_a_lookalike_widget_from_its_cache(changed: JsonObject) -> None:
    validator = Validator()
    valid = {"widgets": [{"id": "w1", "type": "t", "x": 1, "settings": {"a": None}}]}
    validator.check_json(valid)
    widget = {**cast(list[JsonObject], valid["widgets"])[0], **changed}

    with pytest.raises(ValidationError):
        validator.check_json({"widgets": [widget]})


def test_register_widget_type_forgets_widgets_validated_without_it() -> None:
    validator = Validator()
    doc = {"widgets": [{"id": "w1", "type": "chart", "settings": {"metric": 3}}]}
    validator.check_json(doc)

    validator.register_widget_type("chart", ChartSettings)

    assert refusal_json(doc, validator).issues[0].path == "widgets[0].settings.metric"


# -- models: immutable widgets remembered by identity ------------------------------------------


def test_check_json_of_a_model_equals_check_json_of_its_dump() -> None:
    validator = Validator()
    layout = Layout.model_validate(layout_with(6))
    edited = layout.update_widget("w2", title="Renamed").without_widget("w4")

    for document in (layout, edited, layout):
        assert validator.check_json(document) == Validator().check_json(
            document.model_dump(mode="json")
        )


def test_widgets_checked_before_are_not_dumped_again(monkeypatch: pytest.MonkeyPatch) -> None:
    validator = Validator()
    layout = Layout.model_validate(layout_with(5))
    validator.check_json(layout)
    dumped: list[int] = []
    real_dump = pydantic.TypeAdapter.dump_python

    def counting_dump(
        self: pydantic.TypeAdapter[object], value: object, **kwargs: object
    ) -> object:
        dumped.append(len(cast(list[object], value)))
        return real_dump(self, value, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pydantic.TypeAdapter, "dump_python", counting_dump)
    edited = layout.update_widget("w1", title="Renamed")
    validator.check_json(edited)

    assert dumped == [1]  # only the new widget object


def test_lowering_a_limit_forgets_widgets_checked_under_the_old_one() -> None:
    validator = Validator()
    layout = Layout.model_validate(layout_with(3))
    validator.check_json(layout)

    validator.limits = Limits(max_string_length=5)

    with pytest.raises(PayloadTooLargeError):
        validator.check_json(layout)


def test_refusing_unknown_widget_types_forgets_widgets_checked_before() -> None:
    validator = Validator()
    layout = Layout.model_validate(layout_with(2))
    validator.check_json(layout)

    validator.allow_unknown_widget_types = False

    with pytest.raises(ValidationError):
        validator.check_json(layout)


def test_a_layout_built_without_validation_is_still_checked_across_widgets() -> None:
    validator = Validator()
    layout = Layout.model_validate(layout_with(2))
    validator.check_json(layout)
    twice = Layout.model_construct(widgets=(layout.widgets[0], layout.widgets[0]))

    assert refusal_json_of(twice, validator).issues[0].rule == "duplicate_widget_id"


def refusal_json_of(doc: Layout, validator: Validator[Layout]) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        validator.check_json(doc)
    return caught.value


class LooseWidget(BaseModel):
    """A host's widget whose settings dict can be changed in place: never remembered."""

    model_config = ConfigDict(frozen=True)
    id: str
    settings: dict[str, JsonValue] = {}


class LooseLayout(BaseModel):
    model_config = ConfigDict(frozen=True)
    widgets: tuple[LooseWidget, ...] = ()


def test_widgets_that_may_change_in_place_are_checked_every_time() -> None:
    validator = Validator(schema=LooseLayout)
    widget = LooseWidget(id="w1", settings={"limit": 1})
    layout = LooseLayout(widgets=(widget,))
    validator.check_json(layout)

    widget.settings["limit"] = 2

    assert validator.check_json(layout)["widgets"] == [{"id": "w1", "settings": {"limit": 2}}]


def _layout_model(widgets: int = 3) -> Layout:
    return Layout.model_validate(
        {
            "widgets": [
                {"id": f"w{i}", "type": "chart", "x": 0, "y": i * 2, "w": 3, "h": 2}
                for i in range(widgets)
            ],
            "theme": "dark",
            "metadata": {"note": None},
        }
    )


def test_canonical_joins_the_widgets_it_handed_out_and_encodes_anything_else() -> None:
    validator = Validator()
    output = validator.check_json(_layout_model())
    copied = orjson.loads(orjson.dumps(output))  # equal, but not the validator's objects

    widgets = cast(list[JsonValue], output["widgets"])
    mixed = {**output, "widgets": [*widgets[:2], {**cast(JsonObject, widgets[2]), "h": 4}]}

    assert validator.canonical(output) == canonical_json(output)
    assert validator.canonical(copied) == canonical_json(copied)
    assert validator.canonical(mixed) == canonical_json(mixed)
    assert validator.canonical({"theme": "dark"}) == canonical_json({"theme": "dark"})


def test_canonical_refuses_what_canonical_json_refuses() -> None:
    validator = Validator()
    output = validator.check_json(_layout_model())

    widgets = cast(list[JsonValue], output["widgets"])
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="NaN or infinity"):
            validator.canonical({**output, "metadata": {"note": bad}})
        with pytest.raises(ValidationError, match="NaN or infinity"):  # in a widget it lacks
            validator.canonical({**output, "widgets": [*widgets[:2], {"id": "w9", "x": bad}]})


def test_canonical_forgets_widgets_when_the_rules_change() -> None:
    validator = Validator()
    output = validator.check_json(_layout_model())
    validator.limits = Limits(max_string_length=500)

    assert validator._by_plain == {}
    assert validator.canonical(output) == canonical_json(output)


def test_the_shell_of_a_layout_edit_is_reused_until_the_limits_change() -> None:
    validator = Validator()
    layout = _layout_model().with_changes(theme="t" * 40)
    first = validator.check_json(layout)
    edited = layout.update_widget("w1", title="Renamed")  # the same theme, filters, ...

    second = validator.check_json(edited)

    assert second == {**first, "widgets": second["widgets"]}
    assert second is not first and second["widgets"] != first["widgets"]
    validator.limits = Limits(max_string_length=20)  # the reused shell no longer passes
    with pytest.raises(ValidationError, match="max_string_length"):
        validator.check_json(edited.update_widget("w1", title="Again"))


def test_a_changed_shell_is_checked_again() -> None:
    validator = Validator()
    layout = _layout_model()
    validator.check_json(layout)

    changed = validator.check_json(layout.with_changes(theme="light", columns=24))

    assert (changed["theme"], changed["columns"]) == ("light", 24)


def test_a_subclass_of_layout_does_not_inherit_the_shell_reuse() -> None:
    class Tagged(Layout):
        tags: list[str] = Field(default_factory=list)  # mutable: the promise no longer holds

    validator = Validator(schema=Tagged)
    tagged = Tagged(tags=["a"])
    validator.check_json(tagged)
    tagged.tags.append("b" * 10)

    assert validator.check_json(tagged)["tags"] == ["a", "b" * 10]


def test_a_layout_model_whose_widgets_pass_the_byte_limit_is_refused() -> None:
    layout = _layout_model(widgets=12)
    size = len(canonical_json(Validator().check_json(layout)))

    assert Validator(Limits(max_document_bytes=size + 50)).check_json(layout)
    with pytest.raises(PayloadTooLargeError, match="max_document_bytes"):
        Validator(Limits(max_document_bytes=size - 100)).check_json(layout)


def test_canonical_refuses_a_shell_json_cannot_hold_like_canonical_json() -> None:
    validator = Validator()
    output = validator.check_json(_layout_model())

    with pytest.raises(ValidationError, match="not representable as JSON"):
        validator.canonical({**output, "metadata": {"tags": {"a", "b"}}})


def test_a_remembered_shell_still_has_its_widgets_counted() -> None:
    validator = Validator(Limits(max_widgets=3))
    layout = _layout_model(3)
    validator.check_json(layout)
    # The same shell values (theme, filters, ...) by identity, one widget too many.
    crowded = layout.model_copy(update={"widgets": (*layout.widgets, Widget(id="w9", type="t"))})

    assert refusal_json_of(crowded, validator).issues[0].rule == "max_widgets"


def test_a_widget_given_without_its_defaults_is_parsed_once_and_shared() -> None:
    validator = Validator()
    sparse = {"widgets": [{"id": "w1", "type": "chart"}, {"id": "w2", "type": "chart"}]}

    first = validator.check_json(sparse)
    again = validator.check_json(copy_json(sparse))

    expected = Layout.model_validate(sparse).model_dump(mode="json")["widgets"]
    assert first["widgets"] == again["widgets"] == expected
    assert all(map(operator.is_, first["widgets"], again["widgets"]))  # one copy, shared
    assert first["widgets"][0] is not sparse["widgets"][0]  # never the caller's object


def test_a_check_under_way_when_the_limits_change_leaves_nothing_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    validator = Validator()
    layout = _layout_model(2).with_changes(theme="t" * 50)
    checked_models = Validator._checked_models

    def limits_lowered_meanwhile(
        self: Validator[Layout], keyed: object, models: list[BaseModel]
    ) -> object:
        self.limits = Limits(max_string_length=20)  # as another thread might
        return checked_models(self, keyed, models)  # type: ignore[arg-type]

    monkeypatch.setattr(Validator, "_checked_models", limits_lowered_meanwhile)
    validator.check_json(layout)  # begun under the old limits, it passes them
    monkeypatch.undo()

    assert refusal_json_of(layout, validator).issues[0].rule == "max_string_length"
