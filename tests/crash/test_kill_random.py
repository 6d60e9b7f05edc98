"""A process saving in a loop is killed with SIGKILL at random moments; nothing acked is lost.

The shape of PostgreSQL's 013_crash_restart test: ack, kill, reopen, then check that the
store opens, the document parses and matches its checksum, its version is at least the
last acknowledged one, and history ends at the head with no gaps. The random delays come
from a seeded generator, printed on failure, so a failing round can be replayed.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from dashpersist import DocumentKey, open_storage
from dashpersist._canonical import checksum
from tests.children import REPO_ROOT

pytestmark = pytest.mark.slow

ROUNDS = 10
SEED = int(os.environ.get("DASHPERSIST_CRASH_SEED", "20261122"))


def kill_while_saving(url: str, delay: float) -> list[int]:
    """Run a saving child, SIGKILL it *delay* seconds after its first ack; return its acks."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.children", "save-forever", url, "40"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    first = child.stdout.readline()
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    out, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    return [int(line.split()[1]) for line in [first, *out.splitlines()] if line.startswith("ack ")]


def test_a_writer_killed_at_random_moments_keeps_every_acknowledged_save(
    durable_store_url: str,
) -> None:
    rng = random.Random(SEED)
    key = DocumentKey("crash")
    last_acked = 0

    for round_number in range(ROUNDS):
        delay = rng.uniform(0.0, 0.25)
        acked = kill_while_saving(durable_store_url, delay)
        context = f"seed={SEED} round={round_number} delay={delay:.3f}"
        assert acked, f"the child acknowledged nothing ({context})"
        last_acked = max(last_acked, *acked)

        storage = open_storage(durable_store_url)
        try:
            stored = storage.read(key)
            history = storage.versions(key, limit=100_000)
        finally:
            storage.close()

        assert stored is not None, context
        assert stored.version >= last_acked, context
        assert stored.checksum == checksum(stored.document), context
        assert history[0].version == stored.version, context
        assert history[0].checksum == stored.checksum, context
        # Retention keeps at least the newest max_versions (50 by default), with no gaps; it
        # runs after the commit, so a kill in between may leave one more until the next save.
        oldest = history[-1].version
        assert oldest <= max(1, stored.version - 49), context
        assert [r.version for r in history] == list(range(stored.version, oldest - 1, -1)), context
        for newer, older in itertools.pairwise(history):
            assert newer.parent_checksum == older.checksum, context
