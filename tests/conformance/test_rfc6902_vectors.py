"""The RFC 6902 test suite (json-patch/json-patch-tests) against `apply_patch_to_value` and
`make_patch`; the suite's SOURCE.md says where it comes from. Equality is canonical JSON:
types count (``1``, ``1.0`` and ``true`` differ), key order does not.

The vectors live outside the repository: ``<repo>/../shared/vectors/json-patch-tests``, or
the folder named by ``DASHPERSIST_VECTORS``. Without them every case skips with the reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from dashpersist._canonical import canonical_json
from dashpersist.errors import PatchError
from dashpersist.patch import apply_patch_to_value, make_patch
from dashpersist.types import JsonValue

VECTORS = Path(
    os.environ.get(
        "DASHPERSIST_VECTORS",
        Path(__file__).resolve().parents[3] / "shared" / "vectors" / "json-patch-tests",
    )
)
FILES = ("tests.json", "spec_tests.json")


def _records() -> list[Any]:
    missing = [name for name in FILES if not (VECTORS / name).is_file()]
    if missing:
        reason = (
            f"RFC 6902 vectors not found: {', '.join(missing)} in {VECTORS} "
            "(set DASHPERSIST_VECTORS to their folder)"
        )
        return [pytest.param(None, id="vectors-missing", marks=pytest.mark.skip(reason=reason))]
    params = []
    for name in FILES:
        records = json.loads((VECTORS / name).read_text(encoding="utf-8"))
        for number, record in enumerate(records):
            comment = record.get("comment") or record.get("error") or "no comment"
            label = f"{name.removesuffix('.json')}-{number}: {comment}"
            marks = []
            if record.get("disabled"):
                marks.append(pytest.mark.skip(reason=f"disabled in the suite: {comment}"))
            params.append(pytest.param(record, id=label, marks=marks))
    return params


RECORDS = _records()


@pytest.mark.parametrize("record", RECORDS)
def test_the_patch_applies_exactly_as_recorded(record: dict[str, Any]) -> None:
    doc, patch = record["doc"], record["patch"]

    if "error" in record:
        with pytest.raises(PatchError):
            apply_patch_to_value(doc, patch)
    else:
        result = apply_patch_to_value(doc, patch)

        assert canonical_json(result) == canonical_json(record["expected"])


PAIRS = [param for param in RECORDS if param.values[0] is None or "expected" in param.values[0]]


@pytest.mark.parametrize("record", PAIRS)
def test_the_diff_from_doc_to_expected_applies_to_give_expected(record: dict[str, Any]) -> None:
    doc: JsonValue = record["doc"]
    expected: JsonValue = record["expected"]

    patch = make_patch(doc, expected)

    assert canonical_json(apply_patch_to_value(doc, patch)) == canonical_json(expected)


@pytest.mark.parametrize("record", RECORDS)
def test_applying_a_recorded_patch_leaves_the_input_document_unchanged(
    record: dict[str, Any],
) -> None:
    doc = record["doc"]
    before = json.dumps(doc, sort_keys=True)

    if "error" in record:
        with pytest.raises(PatchError):
            apply_patch_to_value(doc, record["patch"])
    else:
        apply_patch_to_value(doc, record["patch"])

    assert json.dumps(doc, sort_keys=True) == before
