"""Saves from a stale base merge three-way on every backend (and across real processes)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import pytest

from dashpersist import (
    ConflictError,
    Layout,
    PersistenceConfig,
    PersistenceManager,
    Widget,
)
from dashpersist.storage import Storage
from tests.children import REPO_ROOT

DIRECT = PersistenceConfig(auto_save=False)  # these tests are about merges, not autosave


def base_layout() -> Layout:
    return Layout(
        widgets=[
            Widget(
                id="w1",
                type="chart",
                title="Revenue",
                x=0,
                y=0,
                w=4,
                h=2,
                settings={"color": "blue"},
            ),
            Widget(id="w2", type="chart", title="Costs", x=4, y=0, w=4, h=2),
            Widget(id="w3", type="table", title="Deals", x=8, y=0, w=4, h=2),
        ]
    )


def two_devices(storage: Storage) -> tuple[PersistenceManager, PersistenceManager]:
    laptop = PersistenceManager(storage, device_id="laptop", config=DIRECT)
    phone = PersistenceManager(storage, device_id="phone", config=DIRECT)
    laptop.save_layout("alice", base_layout())
    phone.load_layout("alice")
    return laptop, phone


def test_disjoint_edits_from_two_devices_are_all_kept(storage: Storage) -> None:
    laptop, phone = two_devices(storage)
    laptop.save_layout(
        "alice", base_layout().update_widget("w1", y=4).update_widget("w2", title="Spend")
    )

    result = phone.save_layout(
        "alice",
        base_layout().update_widget("w1", settings={"color": "red"}).without_widget("w3"),
    )

    merged = laptop.load_layout("alice")
    assert merged is not None
    assert (result.version, result.source) == (3, "storage")
    assert result.merge is not None and result.merge.conflicts == []
    assert merged.widget("w1").y == 4
    assert merged.widget("w1").settings == {"color": "red"}
    assert merged.widget("w2").title == "Spend"
    assert [w.id for w in merged.widgets] == ["w1", "w2"]
    history = phone.get_version_history("alice")
    assert (history[0].change_type, history[0].device_id) == ("conflict_resolution", "phone")
    assert phone.verify("alice").ok


def test_a_field_both_devices_changed_is_one_reported_conflict(storage: Storage) -> None:
    laptop, phone = two_devices(storage)
    laptop.save_layout("alice", base_layout().update_widget("w1", title="From laptop"))

    result = phone.save_layout("alice", base_layout().update_widget("w1", title="From phone"))

    assert result.merge is not None
    (conflict,) = result.merge.conflicts
    assert conflict.path == "/widgets/w1/title"
    assert {conflict.local, conflict.remote} == {"From laptop", "From phone"}
    assert conflict.base == "Revenue"
    merged = laptop.load_layout("alice")
    assert merged is not None and merged.widget("w1").title == conflict.chosen


def test_the_merge_winner_does_not_depend_on_which_device_saves_last(
    storage: Storage,
) -> None:
    def same_moment() -> datetime:
        return datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

    outcomes = []
    for first_name, second_name in (("a", "b"), ("b", "a")):
        user = f"u-{first_name}{second_name}"
        first = PersistenceManager(storage, device_id=first_name, clock=same_moment, config=DIRECT)
        second = PersistenceManager(
            storage, device_id=second_name, clock=same_moment, config=DIRECT
        )
        first.save_layout(user, base_layout())
        second.load_layout(user)
        first.save_layout(user, base_layout().update_widget("w1", title=f"by {first_name}"))
        second.save_layout(user, base_layout().update_widget("w1", title=f"by {second_name}"))
        merged = first.load_layout(user)
        assert merged is not None
        outcomes.append(merged.widget("w1").title)

    assert outcomes[0] == outcomes[1]


def test_a_stale_save_whose_base_was_pruned_is_a_conflict_not_a_guess(storage: Storage) -> None:
    laptop, phone = two_devices(storage)
    for title in ("one", "two", "three"):
        laptop.save_layout("alice", base_layout().update_widget("w2", title=title))
    laptop.cleanup_old_versions("alice", keep=1)

    with pytest.raises(ConflictError) as caught:
        phone.save_layout("alice", base_layout().update_widget("w1", title="phone"))

    assert "no longer in history" in str(caught.value)
    merged = laptop.load_layout("alice")
    assert merged is not None and merged.widget("w2").title == "three"


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 4])
def test_processes_editing_their_own_widgets_lose_no_acknowledged_edit(
    durable_store_url: str, processes: int
) -> None:
    edits = 200
    names = [f"p{n}" for n in range(processes)]
    with PersistenceManager(durable_store_url) as setup:
        setup.save_layout(
            "team",
            Layout(
                widgets=[Widget(id=name, type="metric", x=0, y=i) for i, name in enumerate(names)]
            ),
        )
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.children",
                "edit-own-widget",
                durable_store_url,
                name,
                str(edits),
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    results = [child.communicate(timeout=240) for child in children]
    for child, (_, err) in zip(children, results, strict=True):
        assert child.returncode == 0, err
    acks = sum(1 for out, _ in results for line in out.splitlines() if line.startswith("ack "))

    with PersistenceManager(durable_store_url) as check:
        final = check.load_layout("team")
        history = check.get_version_history("team", limit=1)
    assert final is not None
    assert acks == processes * edits
    assert {w.id: w.settings.get("count") for w in final.widgets} == dict.fromkeys(names, edits)
    assert history[0].version == acks + 1
