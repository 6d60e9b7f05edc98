"""sanitize(): a cleaned, valid copy of an untrusted layout, each fix listed with its path."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from dashpersist.errors import PayloadTooLargeError, ValidationError, ValidationIssue
from dashpersist.models import Layout
from dashpersist.types import JsonValue
from dashpersist.validation import Limits, Validator, sanitize

XSS_TITLE = "Sales <script>alert(1)</script><img src=x onerror=alert(2)>"


def nested_list(depth: int) -> JsonValue:
    value: JsonValue = 1
    for _ in range(depth):
        value = [value]
    return value


def widget(widget_id: str, **fields: object) -> dict[str, object]:
    return {"id": widget_id, "type": "chart", **fields}


def fixes_of(warnings: Sequence[ValidationIssue]) -> list[tuple[str, str]]:
    return [(issue.path, issue.rule) for issue in warnings]


def test_markup_and_event_handlers_are_stripped_keeping_the_text() -> None:
    layout, warnings = sanitize({"widgets": [widget("w1", title=XSS_TITLE)]})

    assert layout.widgets[0].title == "Sales"
    assert fixes_of(warnings) == [("widgets[0].title", "markup")]


@pytest.mark.parametrize(
    ("title", "clean"),
    [
        ('<a href="javascript:alert(1)">Report</a>', "Report"),
        ("&lt;script&gt;alert(1)&lt;/script&gt;Q3", "Q3"),
        ("<b>Bold</b> & <i>italic</i>", "Bold & italic"),
        ("<svg onload=alert(1)>", ""),
    ],
)
def test_markup_in_any_disguise_is_removed(title: str, clean: str) -> None:
    layout, _ = sanitize({"widgets": [widget("w1", title=title)]})

    assert layout.widgets[0].title == clean


def test_plain_text_with_ampersands_and_unicode_is_left_exactly_as_is() -> None:
    titles = ["R&D", "a < b", "Cafe\u0301 👨\u200d👩\u200d👧", "x\u2028y"]
    doc = {"widgets": [widget(f"w{i}", title=title, y=i) for i, title in enumerate(titles)]}

    layout, warnings = sanitize(doc)

    assert [item.title for item in layout.widgets] == titles
    assert warnings == []


def test_markup_in_settings_and_metadata_is_stripped_too() -> None:
    doc = {
        "widgets": [widget("w1", settings={"label": "<b onclick=x()>Total</b>"})],
        "metadata": {"notes": ["<iframe src=evil></iframe>ok"]},
    }

    layout, warnings = sanitize(doc)

    assert layout.widgets[0].settings == {"label": "Total"}
    assert layout.metadata == {"notes": ["ok"]}
    assert ("metadata.notes[0]", "markup") in fixes_of(warnings)


def test_raw_fields_keep_markup_like_characters_exactly() -> None:
    validator = Validator(raw_fields=["widgets[*].settings.api_key"])
    doc = {"widgets": [widget("w1", settings={"api_key": "p<ss&word<b>"})]}

    layout, warnings = validator.sanitize(doc)

    assert layout.widgets[0].settings["api_key"] == "p<ss&word<b>"
    assert warnings == []


def test_control_characters_surrogates_and_bidi_overrides_are_removed() -> None:
    doc = {"widgets": [widget("w1", title="Sa\x00l\ud800e\u202es\x07"), widget("w2", y=1)]}

    layout, warnings = sanitize(doc)

    assert layout.widgets[0].title == "Sales"
    assert fixes_of(warnings) == [("widgets[0].title", "control_character")]


def test_tab_and_newline_survive_sanitizing() -> None:
    layout, warnings = sanitize({"theme": "a\tb\nc"})

    assert layout.theme == "a\tb\nc"
    assert warnings == []


def test_over_long_strings_are_truncated_to_the_limit() -> None:
    validator = Validator(Limits(max_string_length=10))

    layout, warnings = validator.sanitize({"widgets": [widget("w1", title="x" * 25)]})

    assert layout.widgets[0].title == "x" * 10
    assert fixes_of(warnings) == [("widgets[0].title", "max_string_length")]


def test_positions_and_sizes_are_clamped_into_the_grid() -> None:
    doc = {
        "columns": 12,
        "widgets": [
            widget("w1", x=-3, y=-1, w=0, h=-5),
            widget("w2", x=20, y=5, w=30, h=2),
            widget("w3", x=10, y=10, w=4, h="2"),
        ],
    }

    layout, warnings = sanitize(doc)

    assert [(w.x, w.y, w.w, w.h) for w in layout.widgets] == [
        (0, 0, 1, 1),
        (0, 5, 12, 2),
        (8, 10, 4, 1),
    ]
    assert ("widgets[1].x", "grid") in fixes_of(warnings)
    assert ("widgets[2].h", "grid") in fixes_of(warnings)


def test_duplicate_ids_keep_the_first_widget_and_invalid_widgets_are_dropped() -> None:
    doc = {
        "widgets": [
            widget("w1", title="first"),
            widget("w1", title="second", y=4),
            {"id": "../etc", "type": "chart"},
            "not a widget",
            widget("w2", y=8),
        ]
    }

    layout, warnings = sanitize(doc)

    assert [(w.id, w.title) for w in layout.widgets] == [("w1", "first"), ("w2", "")]
    assert fixes_of(warnings) == [
        ("widgets[1]", "duplicate_widget_id"),
        ("widgets[2]", "invalid_widget"),
        ("widgets[3]", "invalid_widget"),
    ]


def test_overlapping_widgets_are_moved_down_until_none_overlap() -> None:
    doc = {
        "widgets": [
            widget("a", x=0, y=0, w=6, h=2),
            widget("b", x=3, y=1, w=6, h=2),
            widget("c", x=0, y=0, w=12, h=1),
            widget("d", x=6, y=0, w=6, h=1),
        ]
    }

    layout, warnings = sanitize(doc)

    assert not any(
        first.x < second.x + second.w
        and second.x < first.x + first.w
        and first.y < second.y + second.h
        and second.y < first.y + first.h
        for i, first in enumerate(layout.widgets)
        for second in layout.widgets[i + 1 :]
    )
    assert layout.widgets[0].y == 0
    assert ("widgets[1].y", "overlap") in fixes_of(warnings)


def test_pollution_ownership_and_unknown_keys_are_dropped() -> None:
    doc = {
        "user_id": "mallory",
        "version": 99,
        "bogus": 1,
        "metadata": {"__proto__": {"admin": True}, "ok": 1},
        "widgets": [widget("w1", colour="red")],
    }

    layout, warnings = sanitize(doc)

    assert layout.metadata == {"ok": 1}
    assert "colour" not in layout.widgets[0].model_dump()
    assert set(fixes_of(warnings)) >= {
        ("user_id", "reserved_key"),
        ("version", "reserved_key"),
        ("bogus", "unknown_field"),
        ("metadata.__proto__", "polluting_key"),
        ("widgets[0]", "unknown_field"),
    }


def test_sanitize_does_not_change_its_input() -> None:
    doc = {"widgets": [widget("w1", title=XSS_TITLE, x=30)]}
    before = repr(doc)

    sanitize(doc)

    assert repr(doc) == before


def test_a_clean_layout_comes_back_equal_with_no_fixes() -> None:
    doc = {"widgets": [widget("w1", title="Sales", x=0, w=4), widget("w2", x=4, w=4)]}

    layout, warnings = sanitize(doc)

    assert layout == Layout.model_validate(doc)
    assert warnings == []


@pytest.mark.parametrize(
    "doc",
    [
        {"metadata": {"x": nested_list(40)}},
        {"metadata": {"n": float("nan")}},
        {"widgets": [widget("w1", settings={"a": 2**60})]},
    ],
    ids=["too-deep", "nan", "huge-int"],
)
def test_what_cannot_be_repaired_is_still_refused(doc: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        sanitize(doc)


def test_an_oversized_document_is_refused_not_sanitized() -> None:
    with pytest.raises(PayloadTooLargeError):
        sanitize(b'{"theme":"' + b"x" * 2_000_000 + b'"}')
