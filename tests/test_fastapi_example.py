"""examples/fastapi_app.py through FastAPI's TestClient, on a temporary SQLite file."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dashpersist import PersistenceManager
from tests.children import REPO_ROOT

pytest.importorskip("fastapi", reason="the FastAPI example needs the dev extra (fastapi, httpx)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (the dev extra)")


def _load_example() -> ModuleType:
    path = Path(REPO_ROOT) / "examples" / "fastapi_app.py"
    spec = importlib.util.spec_from_file_location("fastapi_app_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


example = _load_example()
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=example.HTTPX_NOTICE)
    from fastapi.testclient import TestClient

USER = "/users/alice"


def widget(widget_id: str = "sales", **fields: Any) -> dict[str, Any]:
    return {"id": widget_id, "type": "chart", "title": "Sales", "w": 4, "h": 2, **fields}


def layout(*widgets: dict[str, Any]) -> dict[str, Any]:
    return {"widgets": list(widgets) or [widget()]}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(example.create_app(f"sqlite:///{tmp_path / 'api.db'}")) as client:
        yield client


def put(client: TestClient, path: str, body: dict[str, Any], etag: str | None = None) -> Any:
    return client.put(path, json=body, headers={} if etag is None else {"If-Match": etag})


def test_the_current_layout_is_put_and_read_back_with_its_version(client: TestClient) -> None:
    created = put(client, f"{USER}/layout", layout())

    read = client.get(f"{USER}/layout")

    assert created.status_code == 200
    assert created.json() == {"version": 1, "source": "storage", "merged": False, "conflicts": []}
    assert read.status_code == 200
    assert read.headers["ETag"] == '"1"'
    assert read.json()["layout"]["widgets"][0]["title"] == "Sales"


def test_a_missing_layout_is_404_on_every_route_that_reads_it(client: TestClient) -> None:
    responses = [
        client.get(f"{USER}/layout"),
        client.get(f"{USER}/layouts/nope"),
        client.delete(f"{USER}/layouts/nope"),
        client.post(f"{USER}/layouts/nope/clone", json={"target_layout_id": "copy"}),
        client.get(f"{USER}/layouts/nope/history"),
        client.get(f"{USER}/layouts/nope/diff", params={"a": 1, "b": 2}),
        client.post(f"{USER}/layouts/nope/rollback/1"),
    ]

    assert [r.status_code for r in responses] == [404] * len(responses)


def test_layouts_are_created_listed_updated_cloned_and_deleted(client: TestClient) -> None:
    created = client.post(f"{USER}/layouts/sales", json=layout())
    again = client.post(f"{USER}/layouts/sales", json=layout())
    updated = put(client, f"{USER}/layouts/sales", layout(widget(x=4)), etag='"1"')
    cloned = client.post(f"{USER}/layouts/sales/clone", json={"target_layout_id": "copy"})
    listed = client.get(f"{USER}/layouts").json()
    copy = client.get(f"{USER}/layouts/copy").json()
    deleted = client.delete(f"{USER}/layouts/sales")

    assert (created.status_code, again.status_code) == (201, 409)
    assert (updated.status_code, updated.json()["version"]) == (200, 2)
    assert (cloned.status_code, cloned.json()) == (201, {"layout_id": "copy", "version": 1})
    assert listed == {"layout_ids": ["copy", "sales"]}
    assert copy["layout"]["widgets"][0]["x"] == 4
    assert deleted.status_code == 204
    assert client.get(f"{USER}/layouts").json() == {"layout_ids": ["copy"]}


def test_history_diff_and_rollback(client: TestClient) -> None:
    put(client, f"{USER}/layout", layout())
    put(client, f"{USER}/layout", layout(widget(title="Revenue")), etag='"1"')

    history = client.get(f"{USER}/layouts/default/history").json()["versions"]
    diff = client.get(f"{USER}/layouts/default/diff", params={"a": 1, "b": 2}).json()
    rolled = client.post(f"{USER}/layouts/default/rollback/1")
    current = client.get(f"{USER}/layout")

    assert [(v["version"], v["change_type"], v["device_id"]) for v in history] == [
        (2, "manual", "api"),
        (1, "manual", "api"),
    ]
    assert diff["changes"] == ["retitled widget 'sales'"]
    assert diff["patch"] == [{"op": "replace", "path": "/widgets/0/title", "value": "Revenue"}]
    assert (rolled.status_code, rolled.json()["version"]) == (200, 3)
    assert current.headers["ETag"] == '"3"'
    assert current.json()["layout"]["widgets"][0]["title"] == "Sales"


def test_an_invalid_layout_is_422_with_paths_and_rules_but_no_values(client: TestClient) -> None:
    response = put(client, f"{USER}/layout", layout(widget(x="far-left-secret")))

    assert response.status_code == 422
    assert {"path": "widgets[0].x", "rule": "int_type"} in [
        {"path": i["path"], "rule": i["rule"]} for i in response.json()["issues"]
    ]
    assert "far-left-secret" not in response.text
    assert client.get(f"{USER}/layout").status_code == 404


def test_a_stale_put_merges_with_what_was_saved_since(client: TestClient) -> None:
    put(client, f"{USER}/layout", layout(widget(), widget("costs", x=4)))
    put(client, f"{USER}/layout", layout(widget(x=8), widget("costs", x=4)), etag='"1"')

    stale = put(
        client, f"{USER}/layout", layout(widget(), widget("costs", x=4, title="Spend")), etag='"1"'
    )

    merged = client.get(f"{USER}/layout").json()["layout"]["widgets"]
    assert stale.status_code == 200
    assert stale.json() == {"version": 3, "source": "storage", "merged": True, "conflicts": []}
    assert stale.headers["ETag"] == '"3"'
    assert [(w["id"], w["x"], w["title"]) for w in merged] == [
        ("sales", 8, "Sales"),
        ("costs", 4, "Spend"),
    ]


def test_two_different_titles_for_one_widget_are_409_with_the_conflict(
    client: TestClient,
) -> None:
    put(client, f"{USER}/layout", layout())
    put(client, f"{USER}/layout", layout(widget(title="Revenue")), etag='"1"')

    response = put(client, f"{USER}/layout", layout(widget(title="Turnover")), etag='"1"')

    assert response.status_code == 409
    report = response.json()
    assert (report["base_version"], report["current_version"]) == (1, 2)
    (conflict,) = report["conflicts"]
    assert conflict["path"] == "/widgets/sales/title"
    assert conflict["manual"] is True
    assert (conflict["base"], conflict["local"], conflict["remote"]) == (
        "Sales",
        "Turnover",
        "Revenue",
    )
    assert client.get(f"{USER}/layout").headers["ETag"] == '"2"'


def test_a_put_from_a_version_no_longer_in_history_is_409(
    client: TestClient, tmp_path: Path
) -> None:
    put(client, f"{USER}/layout", layout())
    for version, x in ((1, 2), (2, 4), (3, 6)):
        put(client, f"{USER}/layout", layout(widget(x=x)), etag=f'"{version}"')
    # Retention, as an admin job would apply it, through another manager on the same file.
    with PersistenceManager(f"sqlite:///{tmp_path / 'api.db'}") as admin:
        admin.cleanup_old_versions("alice", keep=1)

    response = put(client, f"{USER}/layout", layout(widget(title="Late")), etag='"1"')

    assert response.status_code == 409
    assert "no longer in history" in response.json()["detail"]
    assert response.json()["current"]["widgets"][0]["x"] == 6


def test_a_put_over_an_existing_layout_needs_if_match(client: TestClient) -> None:
    put(client, f"{USER}/layout", layout())

    response = put(client, f"{USER}/layout", layout(widget(x=2)))

    assert response.status_code == 428
    assert client.get(f"{USER}/layout").headers["ETag"] == '"1"'
