"""Any JSON-like input either validates or raises ValidationError: never another exception."""

from __future__ import annotations

from typing import cast

import orjson
from hypothesis import given
from hypothesis import strategies as st

from dashpersist._canonical import canonical_json
from dashpersist.errors import ValidationError
from dashpersist.models import Layout
from dashpersist.types import JsonObject, JsonValue
from dashpersist.validation import Limits, Validator
from tests.strategies import (
    hostile_layouts,
    hostile_values,
    json_objects,
    nested_values,
    valid_layouts,
)

VALIDATOR = Validator()
SMALL = Validator(Limits(max_depth=6, max_string_length=40, max_keys_per_object=4))


def outcome(validator: Validator, doc: object) -> str:  # type: ignore[type-arg]
    """Return "valid" or the first refused rule; let any other exception escape."""
    try:
        validator.check(doc)  # type: ignore[arg-type]
    except ValidationError as exc:
        return exc.issues[0].rule if exc.issues else "refused without an issue"
    return "valid"


@given(hostile_values)
def test_any_python_value_validates_or_raises_validation_error(value: object) -> None:
    for validator in (VALIDATOR, SMALL):
        assert outcome(validator, value) != "refused without an issue"
        assert outcome(validator, {"metadata": value}) != "refused without an issue"


@given(hostile_layouts())
def test_any_hostile_layout_validates_or_raises_validation_error(doc: dict[object, object]) -> None:
    result = outcome(VALIDATOR, doc)

    report = VALIDATOR.validate(doc)  # type: ignore[arg-type]
    assert report.valid == (result == "valid")


@given(hostile_layouts())
def test_sanitize_returns_a_valid_layout_or_raises_validation_error(
    doc: dict[object, object],
) -> None:
    try:
        layout, _ = VALIDATOR.sanitize(doc)  # type: ignore[arg-type]
    except ValidationError:
        return

    assert VALIDATOR.validate(layout.model_dump(mode="json")).valid


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_any_text_validates_or_raises_validation_error(text: bytes | str) -> None:
    assert outcome(VALIDATOR, text) != "refused without an issue"


@given(st.integers(1, 300), st.sampled_from(["array", "object"]))
def test_any_nesting_depth_validates_or_raises_validation_error(depth: int, kind: str) -> None:
    value = nested_values(depth, kind=kind)
    opening, closing = (b"[", b"]") if kind == "array" else (b'{"a":', b"}")
    text = b'{"metadata":{"x":' + opening * depth + b"1" + closing * depth + b"}}"

    python_result = outcome(VALIDATOR, {"metadata": {"x": value}})
    text_result = outcome(VALIDATOR, text)

    expected = "valid" if depth <= 30 else "max_depth"
    assert python_result == text_result == expected


@given(valid_layouts)
def test_generated_layouts_are_valid_as_values_and_as_text(doc: JsonObject) -> None:
    assert outcome(VALIDATOR, doc) == "valid"
    assert outcome(VALIDATOR, orjson.dumps(doc)) == "valid"


@given(json_objects)
def test_json_text_and_python_value_get_the_same_verdict(doc: JsonObject) -> None:
    as_value = outcome(VALIDATOR, {"metadata": doc})
    as_text = outcome(VALIDATOR, orjson.dumps({"metadata": doc}))

    assert as_value == as_text


@given(hostile_layouts(), hostile_layouts())
def test_check_json_agrees_with_check_even_with_a_warm_cache(
    first: dict[object, object], second: dict[object, object]
) -> None:
    validator = Validator()
    for doc in (first, second, first):
        expected = outcome(validator, doc)
        try:
            normalized = validator.check_json(doc)  # type: ignore[arg-type]
        except ValidationError:
            assert expected != "valid"
            continue
        assert expected == "valid"
        assert normalized == validator.check(doc).model_dump(mode="json")  # type: ignore[arg-type]


@given(valid_layouts, st.lists(st.integers(min_value=0, max_value=20), max_size=6))
def test_the_canonical_json_the_validator_builds_equals_encoding_the_whole_document(
    document: JsonObject, edits: list[int]
) -> None:
    # Committed checksums come from Validator.canonical: it must be canonical_json exactly.
    validator = Validator()
    layout = Layout.model_validate(document)
    outputs = [validator.check_json(layout)]
    for step, pick in enumerate(edits):
        if not layout.widgets:
            break
        widget = layout.widgets[pick % len(layout.widgets)]
        layout = layout.update_widget(widget.id, title=f"Edit {step}")
        outputs.append(validator.check_json(layout))

    for output in outputs:
        assert validator.canonical(output) == canonical_json(output)
        # Widgets it did not hand out (encrypted copies, say) are encoded one by one.
        widgets = cast(list[JsonValue], output["widgets"])
        mixed = {**output, "widgets": [orjson.loads(orjson.dumps(w)) for w in widgets[::2]]}
        mixed["widgets"] += widgets[1::2]  # type: ignore[operator]
        assert validator.canonical(mixed) == canonical_json(mixed)
