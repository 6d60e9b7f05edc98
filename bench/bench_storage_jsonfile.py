"""JSONFileStorage.write against its floor: a raw atomic write of the same bytes.

The floor writes the bytes JSONFileStorage puts in its document file to a temp file,
fsyncs it, renames it over the target and fsyncs the folder. JSONFileStorage does that
plus the lock, the read of the current version, and the fsynced history append. Two
kinds of history record are timed: a keyframe (``record=None``: the history line holds
the whole document again) and a small RFC 6902 patch (what a versioning layer writes
between keyframes). Each revision changes the layout's size, so neither side is
flattered by same-size rewrites.

Run: ``.venv/bin/python bench/bench_storage_jsonfile.py [folder]`` (default: a temp
folder beside this file, on the same disk as the checkout).
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._timing import format_table, layout_document, median_seconds
from dashpersist._canonical import checksum
from dashpersist.storage.jsonfile import JSONFileStorage
from dashpersist.storage.protocol import DocumentKey, VersionRecord
from dashpersist.types import JsonObject

SIZES = (10, 50, 500)


def raw_atomic_write(folder: Path, body: bytes) -> None:
    """The floor: temp file, write, fsync, rename, fsync the folder."""
    temp = folder / "doc.json.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, folder / "doc.json")
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def measure(size: int, base: Path) -> dict[str, object]:
    store = JSONFileStorage(base / f"store-{size}")
    key = DocumentKey("bench-user", f"layout-{size}")
    raw_folder = base / f"raw-{size}"
    raw_folder.mkdir()
    documents = [cast(JsonObject, layout_document(size, revision)) for revision in range(7)]
    store.write(key, documents[0], expected_version=None)
    file_bytes = [store.document_path(key).read_bytes()]
    version = 1

    checksums = [checksum(document) for document in documents]

    def save() -> None:
        nonlocal version
        version = store.write(key, documents[version % 7], expected_version=version)

    def save_with_patch() -> None:
        nonlocal version
        record = VersionRecord(
            version=version + 1,
            checksum=checksums[version % 7],
            parent_checksum=checksums[(version - 1) % 7],
            created_at=datetime.now(UTC),
            change_type="auto",
            patch=[{"op": "replace", "path": "/metadata/revision", "value": version}],
        )
        version = store.write(key, documents[version % 7], record, expected_version=version)

    # The floor writes bytes of the same sizes as the document file (header + document).
    for _revision in range(1, 7):
        save()
        file_bytes.append(store.document_path(key).read_bytes())
    bodies = itertools.cycle(file_bytes)

    def floor() -> None:
        raw_atomic_write(raw_folder, next(bodies))

    batches, per_batch = (7, 30) if size < 500 else (5, 12)
    seconds = median_seconds(
        {"floor": floor, "keyframe": save, "patch": save_with_patch},
        batches=batches,
        per_batch=per_batch,
    )
    store.close()
    return {
        "widgets": size,
        "file KiB": len(file_bytes[-1]) / 1024,
        "floor ms": seconds["floor"] * 1000,
        "keyframe ms": seconds["keyframe"] * 1000,
        "keyframe ratio": seconds["keyframe"] / seconds["floor"],
        "patch ms": seconds["patch"] * 1000,
        "patch ratio": seconds["patch"] / seconds["floor"],
    }


def main() -> None:
    parent = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="bench-jsonfile-", dir=parent) as folder:
        rows = [measure(size, Path(folder)) for size in SIZES]
    columns = ["widgets", "file KiB", "floor ms", "keyframe ms", "keyframe ratio"]
    print(format_table(rows, [*columns, "patch ms", "patch ratio"]))


if __name__ == "__main__":
    main()
