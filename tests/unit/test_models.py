"""Layout and Widget: immutable documents whose edit methods validate what they build."""

from __future__ import annotations

import functools

import pydantic
import pytest

from dashpersist import Layout, Widget
from dashpersist.models import was_validated


def board(count: int = 3) -> Layout:
    return Layout(
        widgets=[Widget(id=f"w{i}", type="chart", x=i * 3, w=3, h=2) for i in range(count)]
    )


def test_update_widget_replaces_one_widget_in_place_and_shares_the_others() -> None:
    layout = board()

    edited = layout.update_widget("w1", title="Sales", h=4)

    assert [w.id for w in edited.widgets] == ["w0", "w1", "w2"]
    assert edited.widget("w1").title == "Sales" and edited.widget("w1").h == 4
    assert edited.widgets[0] is layout.widgets[0] and edited.widgets[2] is layout.widgets[2]
    assert layout.widget("w1").title == ""  # the original is unchanged


def test_with_widget_appends_a_new_id_and_without_widget_removes_one() -> None:
    layout = board(2).with_widget(Widget(id="new", type="note"))

    assert [w.id for w in layout.widgets] == ["w0", "w1", "new"]
    assert [w.id for w in layout.without_widget("w0").widgets] == ["w1", "new"]
    with pytest.raises(KeyError):
        layout.without_widget("missing")


@pytest.mark.parametrize("changes", [{"x": 11}, {"w": 12}], ids=["moved-out", "too-wide"])
def test_an_edit_that_leaves_the_grid_raises_like_full_validation(
    changes: dict[str, int],
) -> None:
    with pytest.raises(pydantic.ValidationError, match=r"widget_outside_grid|x \+ w"):
        board().update_widget("w1", **changes)


def test_a_widget_dict_given_to_with_widget_is_validated() -> None:
    with pytest.raises(pydantic.ValidationError):
        board().with_widget({"id": "../x", "type": "chart"})  # type: ignore[arg-type]


def test_only_models_built_by_validation_count_as_validated() -> None:
    layout = board()
    edited = layout.update_widget("w1", h=3)

    assert was_validated(layout) and was_validated(edited)
    assert was_validated(edited.widget("w1"))
    assert not was_validated(Layout.model_construct(widgets=layout.widgets))
    assert not was_validated(layout.model_copy(update={"columns": 1}))
    assert not was_validated(Widget.model_construct(id="w9", type="chart"))


def test_an_edit_of_an_unvalidated_layout_checks_the_whole_grid() -> None:
    unchecked = Layout.model_construct(
        widgets=(Widget(id="a", type="t", x=10, w=2), Widget(id="b", type="t", x=0, w=1)),
        columns=4,
    )

    with pytest.raises(pydantic.ValidationError):
        unchecked.update_widget("b", h=2)


def test_with_changes_equals_validating_the_widget_dump_with_the_changes() -> None:
    widget = Widget(id="w1", type="chart", settings={"series": ["a", "b"], "opts": {"k": 1}})

    changed = widget.with_changes(title="T", h=3)

    expected = Widget.model_validate({**widget.model_dump(mode="json"), "title": "T", "h": 3})
    assert changed == expected
    assert was_validated(changed)
    with pytest.raises(TypeError):
        changed.settings["series"].append("c")  # type: ignore[attr-defined]  # still deep-frozen


@pytest.mark.parametrize(
    "changes",
    [{"h": 0}, {"x": 1.5}, {"id": "../x"}, {"unknown": 1}, {"settings": {"v": float("nan")}}],
    ids=["below-minimum", "float-for-int", "bad-id", "unknown-field", "nan"],
)
def test_with_changes_refuses_what_validation_refuses(changes: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        Widget(id="w1", type="chart").with_changes(**changes)


class Style(pydantic.BaseModel):
    color: str = "red"


class TaggedWidget(Widget):
    """A host's widget subclass with fields of its own, a cached and a computed property."""

    tags: tuple[str, ...] = ()
    style: Style = Style()

    @functools.cached_property
    def area(self) -> int:
        return self.w * self.h

    @pydantic.computed_field  # type: ignore[prop-decorator]
    @property
    def label(self) -> str:
        return f"{self.type}:{self.id}"


def test_a_widget_subclass_keeps_its_own_fields_through_with_changes() -> None:
    # Its tuple field once went through a JSON dump, and strict validation refused the list.
    widget = TaggedWidget(id="w1", type="chart", tags=("a",), style=Style(color="blue"))
    assert widget.area == 1 and widget.label == "chart:w1"  # cached in __dict__, computed

    changed = widget.with_changes(h=2)

    assert type(changed) is TaggedWidget and changed.tags == ("a",) and changed.h == 2
    assert changed.area == 2 and changed.style == widget.style
    assert changed.style is not widget.style  # a copy: the host's model may be mutable


def test_update_widget_of_a_missing_id_raises_key_error() -> None:
    with pytest.raises(KeyError):
        board().update_widget("missing", h=2)


def test_update_widget_that_changes_the_id_behaves_like_with_widget() -> None:
    layout = board()

    for new_id in ("fresh", "w0"):  # a new id is added; an existing one is replaced
        renamed = layout.update_widget("w1", id=new_id, x=0)
        assert renamed == layout.with_widget(layout.widget("w1").with_changes(id=new_id, x=0))
