"""`DocumentKey` refuses exactly the ids its docstring names, whatever they contain."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dashpersist.errors import ValidationError
from dashpersist.storage import DocumentKey
from dashpersist.storage.protocol import MAX_ID_LENGTH


def _allowed(text: str) -> bool:
    """The rule, spelled out code point by code point."""
    return 1 <= len(text) <= MAX_ID_LENGTH and not any(
        ord(ch) < 0x20 or 0xD800 <= ord(ch) <= 0xDFFF for ch in text
    )


@given(st.text(alphabet=st.characters(exclude_categories=()), max_size=MAX_ID_LENGTH + 2))
@example("\x1f")
@example("\x20")
@example("\x7f")
@example("\ud7ff")
@example("\ud800")
@example("a\udfff")
@example("\ue000")
@example("\U0010ffff")
@example("")
@example("x" * MAX_ID_LENGTH)
@example("x" * (MAX_ID_LENGTH + 1))
def test_an_id_is_accepted_exactly_when_the_rule_allows_it(text: str) -> None:
    for make in (lambda: DocumentKey(text), lambda: DocumentKey("alice", text)):
        if _allowed(text):
            assert make()
        else:
            with pytest.raises(ValidationError):
                make()
