"""A dashboard REST API on dashpersist, with FastAPI and AsyncPersistenceManager.

Serve it with ``uvicorn examples.fastapi_app:create_app --factory``. Run as a script, it
checks itself through FastAPI's TestClient against the embedded default store.

Routes (a real app takes the user from its authentication, not from the path):

    GET    /users/{user}/layout                          the current ("default") layout
    PUT    /users/{user}/layout                          save it
    GET    /users/{user}/layouts                         the user's layout ids
    POST   /users/{user}/layouts/{layout_id}             create a layout (409 if it exists)
    GET    /users/{user}/layouts/{layout_id}             read one
    PUT    /users/{user}/layouts/{layout_id}             save one
    DELETE /users/{user}/layouts/{layout_id}             delete one and its history
    POST   /users/{user}/layouts/{layout_id}/clone       copy it: {"target_layout_id": ...}
    GET    /users/{user}/layouts/{layout_id}/history     versions, newest first
    GET    /users/{user}/layouts/{layout_id}/diff?a=&b=  what changed from version a to b
    POST   /users/{user}/layouts/{layout_id}/rollback/{version}

Optimistic concurrency: a GET answers with ``ETag: "<version>"``; a PUT over an existing
layout must send it back as ``If-Match`` (428 otherwise). A PUT from an older version is
merged three-way with what was saved since and answered 200 with the merge report. When
the merge needs the user (both sides retitled a widget differently, or the version the
client edited is no longer in history) the answer is 409 with the conflict report, and
nothing is written. Invalid layouts get 422 naming paths and rules, never values.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Body, FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from dashpersist import (
    AsyncPersistenceManager,
    Conflict,
    ConflictError,
    ConflictResolver,
    DashPersistError,
    Layout,
    MergePolicy,
    MergeResult,
    NotFoundError,
    PersistenceConfig,
    Storage,
    StorageUnavailableError,
    ValidationError,
)
from dashpersist.merge import MISSING

ASK_THE_USER = {"widgets[*].title": MergePolicy.MANUAL}
"""Titles are what people type by hand: when two devices retitle one widget differently,
ask rather than pick one."""

HTTPX_NOTICE = r"Using `httpx` with `starlette\.testclient` is deprecated"

Manager = AsyncPersistenceManager[Layout]
LayoutBody = Annotated[dict[str, Any], Body(description="A layout as JSON")]


class NeedsTheUser(Exception):  # noqa: N818 - a response, not a failure
    """A stale save whose merge a person must settle; becomes a 409."""

    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__("the merge needs the user")
        self.report = report


class PreconditionRequired(Exception):  # noqa: N818 - a response, not a failure
    """A PUT over an existing layout without If-Match; becomes a 428."""


def create_app(store: str | Storage | None = None) -> FastAPI:
    """Return the API on *store* (a URL, a `Storage`, or ``None``: the default store)."""
    # A REST API saves when the client says so: no autosave queue on the server.
    manager: Manager = AsyncPersistenceManager(
        store, config=PersistenceConfig(auto_save=False), device_id="api"
    )
    resolver = ConflictResolver.for_model(Layout, policies=ASK_THE_USER)
    # One save per document at a time in this process, so "read, merge, save" is one step
    # here; other processes are kept honest by the store's compare-and-swap.
    locks: dict[tuple[str, str], asyncio.Lock] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await manager.aclose()

    app = FastAPI(title="Dashboards", lifespan=lifespan)
    _add_error_handlers(app)

    async def current(user: str, layout_id: str) -> tuple[int, Layout]:
        history = await manager.get_version_history(user, layout_id=layout_id, limit=1)
        if not history:
            raise NotFoundError(f"layout {layout_id!r} of user {user!r} does not exist")
        version = history[0].version
        return version, await manager.get_version(user, version, layout_id=layout_id)

    async def save(
        user: str, layout_id: str, body: dict[str, Any], if_match: str | None, response: Response
    ) -> dict[str, Any]:
        report = await manager.validate(body)
        if not report.valid:
            raise ValidationError(report.errors)
        async with locks.setdefault((user, layout_id), asyncio.Lock()):
            merge: MergeResult | None = None
            # Loading makes the stored version the manager's base for this save.
            if await manager.load_layout(user, layout_id=layout_id) is not None:
                version, _ = await current(user, layout_id)
                base_version = _version_of(if_match)
                if base_version != version:
                    merge = await merge_stale(user, layout_id, base_version, body)
                    body = merge.layout
            result = await manager.save_layout(user, body, layout_id=layout_id)
        response.headers["ETag"] = f'"{result.version}"'
        return {
            "version": result.version,
            "source": result.source,
            "merged": merge is not None,
            "conflicts": [] if merge is None else [_conflict_json(c) for c in merge.conflicts],
        }

    @app.get("/users/{user}/layout")
    async def get_current_layout(user: str, response: Response) -> dict[str, Any]:
        return await get_layout(user, "default", response)

    @app.put("/users/{user}/layout")
    async def put_current_layout(
        user: str,
        body: LayoutBody,
        response: Response,
        if_match: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        return await save(user, "default", body, if_match, response)

    @app.get("/users/{user}/layouts")
    async def list_layouts(user: str) -> dict[str, Any]:
        return {"layout_ids": await manager.list_layouts(user)}

    @app.post("/users/{user}/layouts/{layout_id}", status_code=201)
    async def create_layout(
        user: str, layout_id: str, body: LayoutBody, response: Response
    ) -> dict[str, Any]:
        if await manager.load_layout(user, layout_id=layout_id) is not None:
            return _error(409, f"layout {layout_id!r} already exists")
        return await save(user, layout_id, body, None, response)

    @app.get("/users/{user}/layouts/{layout_id}")
    async def get_layout(user: str, layout_id: str, response: Response) -> dict[str, Any]:
        version, layout = await current(user, layout_id)
        response.headers["ETag"] = f'"{version}"'
        return {"layout_id": layout_id, "version": version, "layout": layout.model_dump()}

    @app.put("/users/{user}/layouts/{layout_id}")
    async def put_layout(
        user: str,
        layout_id: str,
        body: LayoutBody,
        response: Response,
        if_match: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        return await save(user, layout_id, body, if_match, response)

    @app.delete("/users/{user}/layouts/{layout_id}", status_code=204)
    async def delete_layout(user: str, layout_id: str) -> Response:
        await manager.delete_layout(user, layout_id=layout_id)
        return Response(status_code=204)

    @app.post("/users/{user}/layouts/{layout_id}/clone", status_code=201)
    async def clone_layout(
        user: str, layout_id: str, target_layout_id: Annotated[str, Body(embed=True)]
    ) -> dict[str, Any]:
        result = await manager.clone_layout(user, layout_id, target_layout_id)
        return {"layout_id": target_layout_id, "version": result.version}

    @app.get("/users/{user}/layouts/{layout_id}/history")
    async def history(
        user: str,
        layout_id: str,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        before: int | None = None,
    ) -> dict[str, Any]:
        versions = await manager.get_version_history(
            user, layout_id=layout_id, limit=limit, before=before
        )
        if not versions and before is None:
            raise NotFoundError(f"layout {layout_id!r} of user {user!r} does not exist")
        return {
            "versions": [
                {
                    "version": v.version,
                    "created_at": v.created_at.isoformat(),
                    "change_type": v.change_type,
                    "description": v.description,
                    "device_id": v.device_id,
                }
                for v in versions
            ]
        }

    @app.get("/users/{user}/layouts/{layout_id}/diff")
    async def diff(user: str, layout_id: str, a: int, b: int) -> dict[str, Any]:
        changes = await manager.compare_versions(user, a, b, layout_id=layout_id)
        return {
            "from_version": a,
            "to_version": b,
            "summary": changes.summary,
            "changes": [change.describe() for change in changes.changes],
            "patch": changes.patch,
        }

    @app.post("/users/{user}/layouts/{layout_id}/rollback/{version}")
    async def rollback(
        user: str, layout_id: str, version: int, response: Response
    ) -> dict[str, Any]:
        async with locks.setdefault((user, layout_id), asyncio.Lock()):
            layout = await manager.rollback_to_version(user, version, layout_id=layout_id)
            (newest,) = await manager.get_version_history(user, layout_id=layout_id, limit=1)
        response.headers["ETag"] = f'"{newest.version}"'
        return {"version": newest.version, "layout": layout.model_dump()}

    async def merge_stale(
        user: str, layout_id: str, base_version: int, edited: dict[str, Any]
    ) -> MergeResult:
        """Merge a save edited from *base_version* with the current layout, or raise a 409."""
        version, stored = await current(user, layout_id)
        try:
            base = await manager.get_version(user, base_version, layout_id=layout_id)
        except NotFoundError:
            raise NeedsTheUser(
                {
                    "detail": f"version {base_version} is no longer in history: reload, redo",
                    "base_version": base_version,
                    "current_version": version,
                    "current": stored.model_dump(),
                    "conflicts": [],
                }
            ) from None
        # Merge whole documents: a field the client left to its default is not a deletion.
        merged = resolver.resolve(base, Layout.model_validate(edited), stored)
        if merged.has_manual_conflicts:
            raise NeedsTheUser(
                {
                    "detail": "both sides changed what only the user can settle",
                    "base_version": base_version,
                    "current_version": version,
                    "current": stored.model_dump(),
                    "conflicts": [_conflict_json(c) for c in merged.conflicts],
                }
            )
        return merged

    return app


def _version_of(if_match: str | None) -> int:
    if if_match is None:
        raise PreconditionRequired
    tag = if_match.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise ValidationError([], message='If-Match must be an ETag this API sent, like "3"')
    return int(tag)


def _conflict_json(conflict: Conflict) -> dict[str, Any]:
    """Return a conflict as JSON; a side without the value (deleted, never set) is left out."""
    found = {
        "path": conflict.path,
        "kind": conflict.kind,
        "reason": conflict.reason,
        "manual": conflict.manual,
    }
    for side in ("base", "local", "remote", "chosen"):
        value = getattr(conflict, side)
        if value is not MISSING:
            found[side] = value
    return found


def _error(status: int, detail: str, **extra: Any) -> Any:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NeedsTheUser)
    async def needs_the_user(request: Request, exc: NeedsTheUser) -> JSONResponse:
        return JSONResponse(exc.report, status_code=409)

    @app.exception_handler(PreconditionRequired)
    async def precondition(request: Request, exc: PreconditionRequired) -> JSONResponse:
        return _error(428, 'send If-Match: "<version>" with the version you edited')

    @app.exception_handler(ValidationError)
    async def invalid(request: Request, exc: ValidationError) -> JSONResponse:
        issues = [{"path": i.path, "rule": i.rule, "message": i.message} for i in exc.issues]
        return _error(422, "invalid layout" if issues else str(exc), issues=issues)

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(ConflictError)
    async def conflict(request: Request, exc: ConflictError) -> JSONResponse:
        return _error(
            409,
            str(exc),
            expected_version=exc.expected_version,
            current_version=exc.actual_version,
            conflicts=[],
        )

    @app.exception_handler(StorageUnavailableError)
    async def unavailable(request: Request, exc: StorageUnavailableError) -> JSONResponse:
        return _error(503, "storage is unavailable; try again shortly")

    @app.exception_handler(DashPersistError)
    async def other(request: Request, exc: DashPersistError) -> JSONResponse:
        return _error(500, type(exc).__name__)


def main() -> int:
    """Check the API end to end through TestClient on the default store; print the story."""
    with warnings.catch_warnings():
        # Starlette's TestClient now suggests httpx2; httpx is what FastAPI documents.
        warnings.filterwarnings("ignore", message=HTTPX_NOTICE)
        from fastapi.testclient import TestClient

    user = f"demo-{uuid.uuid4().hex[:8]}"
    url = os.environ.get("DASHPERSIST_DEMO_URL")
    layout = {"widgets": [{"id": "sales", "type": "chart", "title": "Sales", "w": 6, "h": 4}]}
    with TestClient(create_app(url)) as client:
        created = client.put(f"/users/{user}/layout", json=layout)
        print(f"PUT  /users/{user}/layout -> {created.status_code}, version {created.json()}")
        etag = created.headers["ETag"]
        moved = {"widgets": [{**layout["widgets"][0], "x": 6}]}
        client.put(f"/users/{user}/layout", json=moved, headers={"If-Match": etag})
        renamed = {"widgets": [{**layout["widgets"][0], "title": "Revenue"}]}
        stale = client.put(f"/users/{user}/layout", json=renamed, headers={"If-Match": etag})
        print(f"PUT  from stale version {etag} -> {stale.status_code}, merged: {stale.json()}")
        current = client.get(f"/users/{user}/layout").json()
        print(f"GET  /users/{user}/layout -> version {current['version']}: {current['layout']}")
        diff = client.get(f"/users/{user}/layouts/default/diff", params={"a": 1, "b": 3})
        print(f"GET  .../diff?a=1&b=3 -> {diff.json()['summary']}")
        bad = client.put(f"/users/{user}/layouts/other", json={"widgets": [{"id": "x"}]})
        print(f"PUT  an invalid layout -> {bad.status_code}: {bad.json()['issues']}")
        ok = (created.status_code, stale.status_code, bad.status_code) == (200, 200, 422)
        ok = ok and current["layout"]["widgets"][0]["x"] == 6
        ok = ok and current["layout"]["widgets"][0]["title"] == "Revenue"
    print("self-check passed" if ok else "self-check FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
