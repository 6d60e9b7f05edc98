"""Hypothesis strategies for JSON documents and dashboard layouts."""

from __future__ import annotations

from hypothesis import strategies as st

from dashpersist.types import JsonObject, JsonValue

# JSON can't hold NaN or infinity, and integers stay JavaScript-safe.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
)
json_keys = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
json_values: st.SearchStrategy[JsonValue] = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(json_keys, children, max_size=5)
    ),
    max_leaves=25,
)
json_objects: st.SearchStrategy[JsonObject] = st.dictionaries(json_keys, json_values, max_size=6)

widget_ids = st.sampled_from([f"w{i}" for i in range(12)])


@st.composite
def widgets(draw: st.DrawFn, widget_id: str) -> JsonObject:
    """Return one widget dict with the given id."""
    return {
        "id": widget_id,
        "type": draw(st.sampled_from(["chart", "table", "metric", "text"])),
        "title": draw(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)),
        "x": draw(st.integers(0, 8)),
        "y": draw(st.integers(0, 20)),
        "w": draw(st.integers(1, 4)),
        "h": draw(st.integers(1, 4)),
        "settings": draw(
            st.dictionaries(
                st.sampled_from(["color", "metric", "limit", "api_key"]), json_scalars, max_size=3
            )
        ),
    }


@st.composite
def layouts(draw: st.DrawFn) -> JsonObject:
    """Return a layout dict: unique widget ids in a random order, plus dashboard state."""
    ids = draw(st.lists(widget_ids, unique=True, max_size=8))
    return {
        "widgets": [draw(widgets(widget_id)) for widget_id in ids],
        "theme": draw(st.sampled_from(["light", "dark"])),
        "filters": draw(
            st.dictionaries(
                st.sampled_from(["region", "year", "team"]), st.text(max_size=5), max_size=3
            )
        ),
    }
