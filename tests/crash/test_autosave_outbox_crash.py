"""Autosave and outbox across real process deaths (S03, S08, S22) on every durable backend."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dashpersist import DocumentKey, open_storage
from tests.children import REPO_ROOT

pytestmark = pytest.mark.slow


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.children", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    child = start(*args, env=env)
    out, err = child.communicate(timeout=120)
    return child.returncode, out, err


def kill_after_ack(*args: str) -> str:
    child = start(*args)
    assert child.stdout is not None
    line = child.stdout.readline()
    child.send_signal(signal.SIGKILL)
    _, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    return line.strip()


def stored_titles(url: str) -> tuple[str | None, list[int]]:
    storage = open_storage(url)
    try:
        current = storage.read(DocumentKey("alice"))
        history = [r.version for r in storage.versions(DocumentKey("alice"), limit=100)]
    finally:
        storage.close()
    title = None if current is None else current.document["widgets"][0]["title"]  # type: ignore[index,call-overload]
    return title, history


def test_a_save_parked_in_the_outbox_survives_sigkill_and_replays_once(
    durable_store_url: str, tmp_path: Path
) -> None:
    outbox = str(tmp_path / "outbox")

    ack = kill_after_ack("park-and-hang", durable_store_url, outbox)
    code, out, err = run("replay", durable_store_url, outbox)
    code_again, out_again, _ = run("replay", durable_store_url, outbox)

    assert ack == "ack outbox"
    assert code == 0, err
    assert out.split() == ["ack", "1", "1"]
    assert code_again == 0
    assert out_again.split() == ["ack", "0", "1"]
    assert stored_titles(durable_store_url) == ("parked", [1])


def test_a_replay_killed_after_its_commit_is_not_written_twice(
    durable_store_url: str, tmp_path: Path
) -> None:
    if durable_store_url.startswith("jsonfile"):
        point = "after_rename_before_dir_fsync"
    else:
        point = "after_commit_before_ack"
    outbox = str(tmp_path / "outbox")
    kill_after_ack("park-and-hang", durable_store_url, outbox)

    killed, _, _ = run(
        "replay", durable_store_url, outbox, env={"DASHPERSIST_FAULTPOINTS": f"{point}=kill"}
    )
    code, out, err = run("replay", durable_store_url, outbox)

    assert killed == -signal.SIGKILL
    assert code == 0, err
    assert out.split() == ["ack", "1", "1"]
    assert stored_titles(durable_store_url) == ("parked", [1])


@pytest.mark.parametrize("how", ["return", "sys.exit"])
def test_a_queued_edit_is_written_when_the_process_exits(
    durable_store_url: str, tmp_path: Path, how: str
) -> None:
    code, out, err = run("queue-and-exit", durable_store_url, str(tmp_path / "outbox"), how)

    assert code == 0, err
    assert out.strip() == "ack queued"
    assert stored_titles(durable_store_url) == ("queued at exit", [1])


def test_sigkill_in_the_debounce_window_loses_only_edits_after_the_last_flush(
    durable_store_url: str, tmp_path: Path
) -> None:
    ack = kill_after_ack("flush-then-queue", durable_store_url, str(tmp_path / "outbox"))

    assert ack == "ack flushed"
    assert stored_titles(durable_store_url) == ("flushed 49", [1])
