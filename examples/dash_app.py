"""A Plotly Dash dashboard whose draggable layout persists per user through dashpersist.

    python examples/dash_app.py --serve         # then open http://127.0.0.1:8050/?user=alice
    python examples/dash_app.py                 # a self-check of the callbacks, no browser

The grid is dash-snap-grid's ``Grid`` (react-grid-layout): drag or resize a tile and the
new positions are saved through autosave. The page remembers the version it loaded and
sends it back as ``base_version``, so a tab that is behind another tab or device merges
its change instead of overwriting theirs. A status line says where the last change is
(saved / queued / offline (outbox)), and a history panel rolls back to any version.

The persistence callbacks are plain functions of a manager and JSON (`open_page`,
`save_grid`, `refresh`, `rollback`, `history_rows`), and `controller` dispatches Dash's
events to them, so tests call them without a browser; `create_app` only wires them to
components. The user comes from the URL (``?user=alice``) to keep the example short; a
real app takes it from its login.

The page state lives in the browser (a ``dcc.Store``): the user id, the version the page
builds on, and the document it shows. Keep encrypted fields out of it (they are decrypted
on load): with secrets in widget settings, keep the document on the server and send the
browser only positions and the version.
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Sequence
from typing import Any, TypeAlias
from urllib.parse import parse_qs

from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update
from dash_snap_grid import Grid

from dashpersist import (
    DashPersistError,
    Layout,
    PersistenceManager,
    SaveResult,
    ValidationError,
    Widget,
    default_store_url,
)

Page: TypeAlias = dict[str, Any]
"""What the browser keeps: ``{"user_id": str, "client_id": str, "version": int | None,
"document": {...}}``; ``client_id`` keeps this tab's queued saves apart from other tabs'."""

GridItem: TypeAlias = dict[str, Any]
"""One tile as react-grid-layout reports it: ``{"i": id, "x": .., "y": .., "w": .., "h": ..}``."""

TILE_PREFIX = "tile-"
"""Grid children need component ids; prefixing widget ids keeps them apart from the page's."""

STARTER = Layout(
    widgets=[
        Widget(id="revenue", type="chart", title="Revenue", x=0, y=0, w=6, h=4),
        Widget(id="churn", type="metric", title="Churn", x=6, y=0, w=3, h=2),
        Widget(id="deals", type="table", title="Open deals", x=9, y=0, w=3, h=4),
        Widget(id="notes", type="text", title="Notes", x=6, y=2, w=3, h=2),
    ]
)
"""The layout a user without one starts from."""

STATUS = {
    "storage": "saved",
    "unchanged": "saved",
    "queued": "queued",
    "outbox": "offline (outbox)",
}
"""The status word for each `SaveResult.source`."""


# -- the persistence callbacks: plain functions -------------------------------------------


def user_from_search(search: str | None) -> str:
    """Return the user named by the URL's query string (``?user=alice``), or ``"demo"``."""
    users = parse_qs((search or "").lstrip("?")).get("user") or ["demo"]
    return users[0]


def open_page(pm: PersistenceManager, user_id: str) -> tuple[Page, str]:
    """Load the user's layout for a new page (creating the starter layout the first time)."""
    loaded = pm.load_versioned(user_id)
    if loaded is None:
        pm.save_layout(user_id, STARTER, immediate=True, description="Starter layout")
        loaded = pm.load_versioned(user_id)
        assert loaded is not None
    page = {
        "user_id": user_id,
        "client_id": uuid.uuid4().hex,
        "version": loaded.version,
        "document": loaded.document.model_dump(mode="json"),
    }
    if loaded.is_pending:
        return page, "queued: this layout has changes not yet in storage"
    return page, f"saved: version {loaded.version}"


def grid_items(document: dict[str, Any]) -> list[GridItem]:
    """Return the grid's ``layout`` prop for a document."""
    return [
        {"i": TILE_PREFIX + w["id"], "x": w["x"], "y": w["y"], "w": w["w"], "h": w["h"]}
        for w in document["widgets"]
    ]


def apply_grid(document: dict[str, Any], items: Sequence[GridItem]) -> dict[str, Any]:
    """Return *document* with the positions and sizes the grid reports (other fields kept)."""
    placed = {
        str(item["i"]).removeprefix(TILE_PREFIX): item
        for item in items
        if isinstance(item, dict) and "i" in item
    }
    widgets = []
    for widget in document["widgets"]:
        item = placed.get(widget["id"], {})
        widgets.append({**widget, **{k: item[k] for k in ("x", "y", "w", "h") if k in item}})
    return {**document, "widgets": widgets}


def status_of(result: SaveResult, pm: PersistenceManager) -> str:
    """Say where a save is, from its `SaveResult.source`."""
    word = STATUS[result.source]
    if result.source == "queued":
        return f"{word}: autosave writes it within {pm.config.auto_save_delay:g} s"
    if result.source == "outbox":
        return f"{word}: the store is unreachable; kept on this server and written when it is back"
    merged = ", merged with changes from another tab or device" if result.merge else ""
    return f"{word}: version {result.version}{merged}"


def save_grid(
    pm: PersistenceManager, page: Page, items: Sequence[GridItem]
) -> tuple[Page, SaveResult | None, str | None]:
    """Save the grid's new positions through autosave, based on the version the page shows.

    Returns the new page state, the save's result and a status line; ``(page, None,
    None)`` when nothing moved (the grid echoes every layout the server sets).
    """
    document = apply_grid(page["document"], items)
    if document == page["document"]:
        return page, None, None
    user_id = page["user_id"]
    try:
        # client_id: autosave coalesces this tab's drags, never another tab's with these.
        result = pm.save_layout(
            user_id,
            document,
            immediate=False,
            base_version=page["version"],
            client_id=page["client_id"],
        )
    except ValidationError as exc:
        return page, None, f"refused: {exc}"
    return {**page, "document": document}, result, status_of(result, pm)


def refresh(pm: PersistenceManager, page: Page) -> tuple[Page, str, bool]:
    """Catch the page up with the store: the version its save became, or another device's.

    Returns the page state, a status line, and whether the grid must be redrawn (the
    stored document differs from the one the page shows).
    """
    user_id = page["user_id"]
    loaded = pm.load_versioned(user_id, client_id=page["client_id"])
    if loaded is None:
        return page, "this layout was deleted", False
    if loaded.is_pending:
        parked = any(entry.user_id == user_id for entry in pm.outbox_entries())
        return page, "offline (outbox)" if parked else "queued", False
    document = loaded.document.model_dump(mode="json")
    redraw = document != page["document"]
    page = {**page, "version": loaded.version, "document": document}
    return page, f"saved: version {loaded.version}", redraw


def history_rows(pm: PersistenceManager, page: Page, *, limit: int = 8) -> list[dict[str, Any]]:
    """Return the newest versions of the user's layout, for the history panel."""
    return [
        {
            "version": info.version,
            "when": info.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            "change_type": info.change_type,
            "description": info.description or "",
            "device_id": info.device_id or "",
        }
        for info in pm.get_version_history(page["user_id"], limit=limit)
    ]


def rollback(pm: PersistenceManager, page: Page, version: int) -> tuple[Page, str]:
    """Make *version*'s content the newest version again, and show it."""
    user_id = page["user_id"]
    try:
        # Write this document's queued save first: written after the rollback, it would
        # merge the old positions back in.
        pm.sync(user_id)
        pm.rollback_to_version(user_id, version)
    except DashPersistError as exc:
        return page, f"rollback failed: {exc}"
    page, _, _ = refresh(pm, page)
    return page, f"saved: version {page['version']} restores version {version}"


# -- Dash wiring ---------------------------------------------------------------------------


def tiles(document: dict[str, Any]) -> list[html.Div]:
    """Return the grid's children: one tile per widget."""
    return [
        html.Div(
            [html.B(w["title"] or w["id"]), html.Div(w["type"], style={"color": "#666"})],
            id=TILE_PREFIX + w["id"],
            style={"background": "#eef3fb", "padding": "8px", "height": "100%"},
        )
        for w in document["widgets"]
    ]


def history_panel(rows: list[dict[str, Any]]) -> html.Table:
    """Return the history panel: one row per version, each with a rollback button."""
    return html.Table(
        [
            html.Tr(
                [
                    html.Td(f"v{row['version']}"),
                    html.Td(row["when"]),
                    html.Td(row["change_type"]),
                    html.Td(row["description"]),
                    html.Td(
                        html.Button("roll back", id={"type": "rollback", "version": row["version"]})
                    ),
                ]
            )
            for row in rows
        ]
    )


Outputs: TypeAlias = tuple[Any, Any, Any, Any, Any]
"""(page, grid children, grid layout, status, history panel); ``no_update`` where unchanged."""

NOTHING: Outputs = (no_update, no_update, no_update, no_update, no_update)


def _everything(pm: PersistenceManager, page: Page, status: str) -> Outputs:
    document = page["document"]
    rows = history_rows(pm, page)
    return page, tiles(document), grid_items(document), status, history_panel(rows)


def _after_save(pm: PersistenceManager, page: Page, items: Sequence[GridItem]) -> Outputs:
    new_page, result, status = save_grid(pm, page, items)
    if status is None:
        return NOTHING
    if result is None:  # refused: put the tiles back where the page's document has them
        return no_update, no_update, grid_items(page["document"]), status, no_update
    return new_page, no_update, no_update, status, no_update


def _after_poll(pm: PersistenceManager, page: Page) -> Outputs:
    new_page, status, redraw = refresh(pm, page)
    moved_on = new_page["version"] != page["version"]
    document = new_page["document"]
    return (
        new_page if moved_on or redraw else no_update,
        tiles(document) if redraw else no_update,
        grid_items(document) if redraw else no_update,
        status,
        history_panel(history_rows(pm, new_page)) if moved_on else no_update,
    )


def controller(
    pm: PersistenceManager,
    trigger: object,
    value: object,
    *,
    search: str | None,
    items: Sequence[GridItem] | None,
    page: Page | None,
) -> Outputs:
    """Handle one Dash event: *trigger* is the id of the input that fired, *value* its value."""
    if page is None or trigger == "url":
        return _everything(pm, *open_page(pm, user_from_search(search)))
    if trigger == "grid":
        return _after_save(pm, page, items or [])
    if trigger == "poll":
        return _after_poll(pm, page)
    if isinstance(trigger, dict) and trigger.get("type") == "rollback" and value:
        return _everything(pm, *rollback(pm, page, int(trigger["version"])))
    return NOTHING


def create_app(pm: PersistenceManager) -> Dash:
    """Return the Dash app, its callbacks wired to *pm*."""
    app = Dash(__name__, title="dashpersist + Dash")
    app.layout = html.Div(
        [
            dcc.Location(id="url"),
            dcc.Store(id="page"),
            dcc.Interval(id="poll", interval=1000),
            html.H2("Your dashboard"),
            html.Div(id="status", style={"fontFamily": "monospace"}),
            Grid(id="grid", cols=STARTER.columns, rowHeight=60, layout=[], children=[]),
            html.H3("History"),
            html.Div(id="history"),
        ],
        style={"maxWidth": "1100px", "margin": "auto", "fontFamily": "sans-serif"},
    )

    @app.callback(
        Output("page", "data"),
        Output("grid", "children"),
        Output("grid", "layout"),
        Output("status", "children"),
        Output("history", "children"),
        Input("url", "search"),
        Input("grid", "layout"),
        Input("poll", "n_intervals"),
        Input({"type": "rollback", "version": ALL}, "n_clicks"),
        State("page", "data"),
    )
    def on_event(
        search: str | None,
        items: list[GridItem] | None,
        _ticks: int | None,
        _clicks: list[int | None],
        page: Page | None,
    ) -> Outputs:
        value = ctx.triggered[0]["value"] if ctx.triggered else None
        return controller(pm, ctx.triggered_id, value, search=search, items=items, page=page)

    return app


# -- running it ----------------------------------------------------------------------------


def self_check(store: str) -> None:
    """Run the persistence callbacks once, as a page would, and print what they did."""
    user = f"dash-check-{uuid.uuid4().hex[:8]}"  # a fresh user: the story is the same each run
    with PersistenceManager(store, device_id="dash-server") as pm:
        create_app(pm)  # the wiring builds
        page, status = open_page(pm, user)
        print(f"Opened the page of {user}: {status}.")

        items = grid_items(page["document"])
        items[0] = {**items[0], "y": 4}
        page, result, status = save_grid(pm, page, items)
        assert result is not None
        assert result.source == "queued"
        print(f"Dragged 'revenue' down: {status}.")

        pm.flush()
        page, status, redraw = refresh(pm, page)
        assert page["version"] == 2
        assert not redraw
        print(f"After the autosave: {status}.")

        page, status = rollback(pm, page, 1)
        assert page["version"] == 3
        assert page["document"]["widgets"][0]["y"] == 0
        print(f"Rolled back: {status}.")
        for row in history_rows(pm, page):
            print(f"  v{row['version']}  {row['change_type']:<8}  {row['description']}")
        pm.delete_layout(user)  # leave the store as it was


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="serve the app (else self-check)")
    parser.add_argument(
        "--store",
        default=os.environ.get("DASHPERSIST_URL") or default_store_url(),
        help="store URL (default: $DASHPERSIST_URL or the embedded default store)",
    )
    parser.add_argument("--port", type=int, default=8050)
    args = parser.parse_args(argv)
    if not args.serve:
        self_check(args.store)
        return
    with PersistenceManager(args.store, device_id="dash-server") as pm:
        create_app(pm).run(host="127.0.0.1", port=args.port, debug=False)


if __name__ == "__main__":
    main()
