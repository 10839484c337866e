"""The recommendations API (`mldp serve`): the lab's "model inference" service over HTTP, on the live model.

Endpoints (JSON in and out; the lab's Lambda calls the first three exactly so):

- `POST /user_embeddings`: `[{"city", "country", "creditlimit"}, ...]` -> `[{"embedding": [32 numbers],
  "model_version", "notes"}, ...]`, one per customer, in order.
- `POST /items_from_user?limit=N`: one customer's entry of a `/user_embeddings` answer (or that whole
  one-customer answer, or `{"embedding": [...]}`, or a customer's features) -> `[{"id", "score"}, ...]`,
  highest cosine similarity first.
- `GET /items_from_item?item_id=X&limit=N` -> `[{"id", "distance"}, ...]`, nearest first, X excluded.
- `GET /health`: the process answers (liveness). `GET /ready`: 200 with the live model version once one is
  loaded, else 503 with the reason (readiness).

`limit` is 1 to 100 (5 when absent). Every answer carries the model version in `X-Model-Version`. Errors are
`{"error": "..."}` naming the field or the cause: 400 (not JSON), 404 (unknown item or path), 405, 409 (an
embedding of another model version than the live one), 413 (body over `MAX_EVENT_BYTES`), 422 (a missing or
mistyped field, a limit out of range) and 503 (no model loaded, or the database cannot answer; with
`Retry-After`). Nothing answers 500 with a traceback: an unexpected error is logged (its message masked of
credentials) and answered with a plain 500; answers are ASCII JSON, so no client text echoed in a message
can make one fail.

The logic is `recsys_assets.recommender.LiveRecommender`; this module is HTTP only. Built on Starlette and
served by uvicorn, the stack Dagster's own webserver runs on.
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from recsys_assets.recommender import LiveRecommender, RequestError, Unavailable, _reason
from resources.credentials import scrub

logger = logging.getLogger("mldp.recommendations_api")


class AsciiJSONResponse(JSONResponse):
    """JSON in ASCII: any text a client sent, echoed in a message, is escaped, so no answer fails to encode."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _not_json_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


async def _json_body(request: Request, max_bytes: int):
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(f"the body is {int(declared):,} bytes, over the limit of {max_bytes:,} bytes (MAX_EVENT_BYTES)",
                           status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(f"the body is over the limit of {max_bytes:,} bytes (MAX_EVENT_BYTES)", status=413)
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        raise RequestError("the body is empty: a JSON document was expected", status=400)
    try:
        return json.loads(body, parse_constant=_not_json_constant)
    except RecursionError:
        raise RequestError("the body is not JSON this service reads: nested too deeply", status=400) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        message = f"{exc.msg} (line {exc.lineno}, column {exc.colno})" if hasattr(exc, "msg") else str(exc)
        raise RequestError(f"the body is not JSON: {message}", status=400) from None


def create_app(recommender: LiveRecommender, *, max_body_bytes: int = 1024 * 1024, follow: bool = True,
               on_shutdown=None, secrets: tuple[str | None, ...] = ()) -> Starlette:
    """The ASGI application over `recommender`; with `follow`, the live version is followed in the background
    while the application runs. `secrets`: connection strings whose credentials are masked in what is logged."""

    def guarded(endpoint):
        """Every outcome of an endpoint as an answer: a refusal (4xx) or an outage (503) with its message, and
        anything unexpected as a plain 500, logged here with credentials masked (an exception left to the
        server would be logged by it raw, traceback and all)."""
        async def run(request: Request) -> JSONResponse:
            try:
                return await endpoint(request)
            except RequestError as exc:
                return AsciiJSONResponse({"error": str(exc)}, status_code=exc.status)
            except Unavailable as exc:
                message = scrub(str(exc), *secrets)
                logger.warning("answered 503: %s", message)
                return AsciiJSONResponse({"error": message}, status_code=503, headers={"Retry-After": "5"})
            except Exception as exc:  # noqa: BLE001 - answered without a traceback, logged masked
                logger.error("%s %s failed: %s", request.method, request.url.path, scrub(_reason(exc), *secrets))
                return AsciiJSONResponse({"error": "internal error: the service's log has the cause"}, status_code=500)

        return run

    async def answer(request: Request, work) -> JSONResponse:
        # queries answered from memory are short: run them on the event loop; a query that may wait on the
        # database (items queried in pgvector, a version being read) runs on a worker thread
        snapshot = recommender._snapshot
        if snapshot is not None and snapshot.in_memory is not None:
            version, body = work()
        else:
            version, body = await run_in_threadpool(work)
        return AsciiJSONResponse(body, headers={"X-Model-Version": version})

    async def user_embeddings(request: Request) -> JSONResponse:
        body = await _json_body(request, max_body_bytes)
        return await answer(request, lambda: recommender.user_embeddings(body))

    async def items_from_user(request: Request) -> JSONResponse:
        limit = request.query_params.get("limit")
        body = await _json_body(request, max_body_bytes)
        return await answer(request, lambda: recommender.items_from_user(body, limit))

    async def items_from_item(request: Request) -> JSONResponse:
        item_id, limit = request.query_params.get("item_id"), request.query_params.get("limit")
        return await answer(request, lambda: recommender.items_from_item(item_id, limit))

    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def ready(_request: Request) -> JSONResponse:
        status = recommender.status()
        if status["problem"]:
            status["problem"] = scrub(status["problem"], *secrets)
        headers = {"X-Model-Version": status["model_version"]} if status["model_version"] else {}
        return AsciiJSONResponse(status, status_code=200 if status["ready"] else 503, headers=headers)

    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return AsciiJSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @asynccontextmanager
    async def lifespan(_app):
        if follow:
            await run_in_threadpool(recommender.start_following)
        try:
            yield
        finally:
            recommender.stop_following()
            if on_shutdown is not None:
                on_shutdown()

    return Starlette(
        routes=[
            Route("/user_embeddings", guarded(user_embeddings), methods=["POST"]),
            Route("/items_from_user", guarded(items_from_user), methods=["POST"]),
            Route("/items_from_item", guarded(items_from_item), methods=["GET"]),
            Route("/health", guarded(health), methods=["GET"]),
            Route("/ready", guarded(ready), methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )


def app_from_env() -> Starlette:
    """The application as `mldp serve` runs it (uvicorn's factory): settings from the environment, read-only
    connections to the database holding the live embeddings, towers from `ARTIFACTS_URI`."""
    from recsys_assets.live_model import ArtifactTowers, query_connector
    from resources.item_index import LiveItems
    from resources.settings import PlatformSettings
    from resources.vector_queries import ReadOnlyNearestItems

    settings = PlatformSettings.from_env()
    store = ReadOnlyNearestItems(query_connector(settings, embedded_fallback=True))
    items = LiveItems(store, settings.item_index_max_items)
    recommender = LiveRecommender(items, ArtifactTowers(settings).embedder, settings.recommender_refresh_seconds)
    return create_app(recommender, max_body_bytes=settings.max_event_bytes, on_shutdown=items.close,
                      secrets=(settings.database_url, settings.readonly_database_url))
