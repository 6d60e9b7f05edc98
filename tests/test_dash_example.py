"""examples/dash_app.py: its persistence callbacks, on a temporary SQLite file, no browser."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dashpersist import PersistenceConfig, PersistenceManager, SaveResult, StorageUnavailableError
from dashpersist.storage import SQLStorage
from dashpersist.testing import FaultyStorage
from tests.children import REPO_ROOT

pytest.importorskip("dash", reason="the Dash example needs the dev extra (dash)")
pytest.importorskip(
    "dash_snap_grid", reason="the Dash example needs the dev extra (dash-snap-grid)"
)


def _load_example() -> ModuleType:
    path = Path(REPO_ROOT) / "examples" / "dash_app.py"
    spec = importlib.util.spec_from_file_location("dash_app_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


example = _load_example()


def _manager(
    store: str | Any, tmp_path: Path, device_id: str = "dash-server"
) -> PersistenceManager:
    # No background threads: a queued save stays queued until the test flushes it.
    return PersistenceManager(
        store,
        device_id=device_id,
        config=PersistenceConfig(outbox_dir=tmp_path / "outbox", retry_initial_delay=0),
        start_threads=False,
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'dash.db'}"


@pytest.fixture
def pm(url: str, tmp_path: Path) -> Iterator[PersistenceManager]:
    manager = _manager(url, tmp_path)
    yield manager
    manager.close()


def drag(page: dict[str, Any], tile: str, **position: int) -> list[dict[str, Any]]:
    """The grid's layout after the user moved *tile*."""
    items = example.grid_items(page["document"])
    return [
        {**item, **position} if item["i"] == example.TILE_PREFIX + tile else item for item in items
    ]


def widget(page: dict[str, Any], widget_id: str) -> dict[str, Any]:
    return next(w for w in page["document"]["widgets"] if w["id"] == widget_id)


def test_a_new_user_gets_the_starter_layout_as_version_1(pm: PersistenceManager) -> None:
    page, status = example.open_page(pm, "alice")

    assert (page["user_id"], page["version"], status) == ("alice", 1, "saved: version 1")
    assert page["document"] == example.STARTER.model_dump(mode="json")
    assert [row["description"] for row in example.history_rows(pm, page)] == ["Starter layout"]


def test_a_returning_user_gets_the_layout_they_left(
    pm: PersistenceManager, url: str, tmp_path: Path
) -> None:
    page, _ = example.open_page(pm, "alice")
    example.save_grid(pm, page, drag(page, "churn", x=0, y=6))
    pm.close()

    with _manager(url, tmp_path) as again:
        reopened, status = example.open_page(again, "alice")

    assert (reopened["version"], status) == (2, "saved: version 2")
    assert (widget(reopened, "churn")["x"], widget(reopened, "churn")["y"]) == (0, 6)


def test_a_drag_is_queued_and_becomes_a_version_when_flushed(pm: PersistenceManager) -> None:
    page, _ = example.open_page(pm, "alice")

    page, result, status = example.save_grid(pm, page, drag(page, "revenue", y=4))
    _, status_while_queued, _ = example.refresh(pm, page)
    pm.flush()
    page, status_after, redraw = example.refresh(pm, page)

    assert result is not None and (result.source, result.version) == ("queued", None)
    assert status == "queued: autosave writes it within 2 s"
    assert status_while_queued == "queued"
    assert (page["version"], status_after, redraw) == (2, "saved: version 2", False)
    assert widget(page, "revenue")["y"] == 4
    assert example.history_rows(pm, page)[0]["change_type"] == "auto"


def test_a_grid_echoing_the_page_saves_nothing(pm: PersistenceManager) -> None:
    page, _ = example.open_page(pm, "alice")

    after = example.save_grid(pm, page, example.grid_items(page["document"]))

    assert after == (page, None, None)
    assert not pm.has_pending_writes


def test_a_stale_page_merges_with_another_devices_change(
    pm: PersistenceManager, url: str, tmp_path: Path
) -> None:
    page, _ = example.open_page(pm, "alice")
    with _manager(url, tmp_path, device_id="phone") as phone:
        on_phone = phone.load_layout("alice")
        assert on_phone is not None
        phone.save_layout("alice", on_phone.update_widget("deals", title="Deals"), immediate=True)

    page, result, _ = example.save_grid(pm, page, drag(page, "revenue", y=4))
    [written] = pm.flush()
    page, status, redraw = example.refresh(pm, page)

    assert result is not None and result.source == "queued"
    assert written.merge is not None and written.merge.conflicts == []
    assert (page["version"], status, redraw) == (3, "saved: version 3", True)
    assert widget(page, "deals")["title"] == "Deals"
    assert widget(page, "revenue")["y"] == 4
    assert example.history_rows(pm, page)[0]["change_type"] == "conflict_resolution"


def test_two_tabs_of_one_user_both_keep_their_moves(pm: PersistenceManager) -> None:
    first_tab, _ = example.open_page(pm, "alice")
    second_tab, _ = example.open_page(pm, "alice")

    example.save_grid(pm, first_tab, drag(first_tab, "revenue", y=4))
    example.save_grid(pm, second_tab, drag(second_tab, "notes", x=0, y=8))
    pm.flush()
    page, _, _ = example.refresh(pm, second_tab)

    assert widget(page, "revenue")["y"] == 4
    assert (widget(page, "notes")["x"], widget(page, "notes")["y"]) == (0, 8)


def test_rollback_writes_the_queued_move_first_then_restores_the_version(
    pm: PersistenceManager,
) -> None:
    page, _ = example.open_page(pm, "alice")
    page, _, _ = example.save_grid(pm, page, drag(page, "revenue", y=4))

    page, status = example.rollback(pm, page, 1)
    pm.flush()

    history = example.history_rows(pm, page)
    assert [row["version"] for row in history] == [3, 2, 1]
    assert history[0]["change_type"] == "rollback"
    assert pm.get_version("alice", 2).widget("revenue").y == 4
    assert (page["version"], status) == (3, "saved: version 3 restores version 1")
    assert page["document"] == example.STARTER.model_dump(mode="json")
    assert pm.load_layout("alice") == example.STARTER


def test_a_rollback_to_a_missing_version_is_reported_not_raised(pm: PersistenceManager) -> None:
    page, _ = example.open_page(pm, "alice")

    after, status = example.rollback(pm, page, 42)

    assert after == page
    assert status.startswith("rollback failed:")


def test_a_drag_while_the_store_is_down_waits_in_the_outbox(url: str, tmp_path: Path) -> None:
    store = FaultyStorage(SQLStorage(url))
    with _manager(store, tmp_path) as pm:
        page, _ = example.open_page(pm, "alice")
        store.go_offline()

        page, _, _ = example.save_grid(pm, page, drag(page, "revenue", y=4))
        [parked] = pm.flush()
        _, status_offline, _ = example.refresh(pm, page)
        with pytest.raises(StorageUnavailableError):
            pm.sync("alice")
        store.go_online()
        synced = pm.sync("alice")
        page, status_online, _ = example.refresh(pm, page)

    store.close()
    assert parked.source == "outbox"
    assert example.status_of(parked, pm).startswith("offline (outbox):")
    assert status_offline == "offline (outbox)"
    assert (synced.replayed, page["version"], status_online) == (1, 2, "saved: version 2")
    assert widget(page, "revenue")["y"] == 4


def test_an_invalid_grid_is_refused_and_nothing_is_queued(pm: PersistenceManager) -> None:
    page, _ = example.open_page(pm, "alice")

    after, result, status = example.save_grid(pm, page, drag(page, "revenue", x=10))

    assert (after, result) == (page, None)
    assert status is not None and status.startswith("refused:")
    assert "widgets[0]" in status
    assert not pm.has_pending_writes


@pytest.mark.parametrize(
    ("result", "status"),
    [
        (SaveResult(success=True, version=4, source="storage"), "saved: version 4"),
        (SaveResult(success=True, version=4, source="unchanged"), "saved: version 4"),
        (SaveResult(success=True, version=None, source="queued"), "queued: autosave"),
        (SaveResult(success=True, version=None, source="outbox"), "offline (outbox):"),
    ],
)
def test_the_status_line_names_where_the_save_is(
    pm: PersistenceManager, result: SaveResult, status: str
) -> None:
    assert example.status_of(result, pm).startswith(status)


@pytest.mark.parametrize(
    ("search", "user"), [("?user=alice", "alice"), ("", "demo"), (None, "demo"), ("?x=1", "demo")]
)
def test_the_user_comes_from_the_query_string(search: str | None, user: str) -> None:
    assert example.user_from_search(search) == user


def test_the_dash_callback_opens_the_page_then_saves_a_drag(pm: PersistenceManager) -> None:
    client = example.create_app(pm).server.test_client()
    outputs = [
        {"id": "page", "property": "data"},
        {"id": "grid", "property": "children"},
        {"id": "grid", "property": "layout"},
        {"id": "status", "property": "children"},
        {"id": "history", "property": "children"},
    ]

    def fire(changed: str, search: str, items: list[Any], page: Any) -> dict[str, Any]:
        body = {
            "output": "..page.data...grid.children...grid.layout...status.children"
            "...history.children..",
            "outputs": outputs,
            "inputs": [
                {"id": "url", "property": "search", "value": search},
                {"id": "grid", "property": "layout", "value": items},
                {"id": "poll", "property": "n_intervals", "value": None},
                [],
            ],
            "changedPropIds": [changed],
            "state": [{"id": "page", "property": "data", "value": page}],
        }
        answer = client.post("/_dash-update-component", json=body)
        assert answer.status_code == 200
        return answer.get_json()["response"]

    opened = fire("url.search", "?user=bob", [], None)
    page = opened["page"]["data"]
    moved = fire("grid.layout", "?user=bob", drag(page, "churn", y=6), page)

    assert opened["status"]["children"] == "saved: version 1"
    assert [item["i"] for item in opened["grid"]["layout"]] == [
        "tile-revenue",
        "tile-churn",
        "tile-deals",
        "tile-notes",
    ]
    assert moved["status"]["children"].startswith("queued")
    assert widget(moved["page"]["data"], "churn")["y"] == 6
    # The tab's own queued save, read back through its client id:
    loaded = pm.load_versioned("bob", client_id=page["client_id"])
    assert loaded is not None
    assert loaded.is_pending
    assert loaded.document.widget("churn").y == 6
