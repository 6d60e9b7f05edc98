"""Several processes writing one document through each durable backend lose nothing."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from dashpersist import DocumentKey, open_storage
from tests.children import REPO_ROOT

pytestmark = pytest.mark.slow

WRITES_PER_PROCESS = 40


def run_children(url: str, count: int) -> list[str]:
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.children",
                "append",
                url,
                f"p{n}",
                str(WRITES_PER_PROCESS),
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(count)
    ]
    lines: list[str] = []
    try:
        for child in children:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err
            lines += out.splitlines()
    finally:
        for child in children:  # after a failure, leave no child or pipe behind
            if child.poll() is None:
                child.kill()
            child.communicate()
    return lines


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_appending_to_one_document_lose_no_acknowledged_write(
    durable_store_url: str, processes: int
) -> None:
    lines = run_children(durable_store_url, processes)

    acked = [line.removeprefix("ack ") for line in lines if line.startswith("ack ")]
    storage = open_storage(durable_store_url)
    try:
        stored = storage.read(DocumentKey("shared"))
        history = storage.versions(DocumentKey("shared"), limit=100_000)
    finally:
        storage.close()
    assert stored is not None
    tokens = stored.document["tokens"]
    assert isinstance(tokens, list)
    assert len(acked) == processes * WRITES_PER_PROCESS
    assert Counter(tokens) == Counter(acked)
    assert stored.version == len(acked)
    assert [r.version for r in history] == list(range(len(acked), 0, -1))
    assert set(lines) - {line for line in lines if line.startswith("ack ")} <= {"conflict"}
