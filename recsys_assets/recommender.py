"""The recommender's online queries, on the live model version: the recommendations API's logic, without HTTP.

The lab's "model inference" service answers three questions, and so does `LiveRecommender`:

- `user_embeddings(users)`: customers' features (`city`, `country`, `creditlimit`) in, one embedding each
  out, from the live version's user tower (new customers included);
- `items_from_user(body, limit)`: an embedding from `user_embeddings`, or a customer's features, in; the
  `limit` most similar items out, `[{id, score}]`, highest cosine similarity first;
- `items_from_item(item_id, limit)`: the `limit` items closest to an item, `[{id, distance}]`, nearest
  first, the item itself excluded.

Every answer is of one model version, named in it: a query takes the version live when it starts (its user
tower and its items, held together in a `Snapshot`), and an embedding that names another version is
refused rather than compared with items it was not trained with. A background refresh
(`start_following`) checks the live version every `refresh_seconds` and switches to a new one once its
tower and items are read, without a restart; while the database cannot be reached, the version held in
memory goes on answering and `status()` says so.

Bad input raises `RequestError` naming the field; a database that cannot answer raises `Unavailable`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from recsys_assets.enrichment import MAX_TEXT_LENGTH, EventRejected, UserEmbedder, _clean, check_customer
from resources.item_index import LiveItems
from resources.vector_queries import EmbeddingsMismatchError, EmbeddingsVersionChanged, QueryValueError

MAX_LIMIT = 100
MAX_USERS = 1_000  # per /user_embeddings request


class RequestError(ValueError):
    """The request cannot be answered as asked (HTTP 4xx); `status` is the HTTP status, the message names
    the field or the id."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class Unavailable(RuntimeError):
    """Nothing can be answered now (HTTP 503): no embeddings are loaded, or the database cannot be reached."""


@dataclass(frozen=True)
class Snapshot:
    """One model version's user tower and items, taken together."""

    version: str
    embedder: UserEmbedder
    in_memory: int | None  # the items held in memory, or None: queried in the database (HNSW)
    loaded_at: float


def check_limit(raw) -> int:
    """The `limit` query parameter: a whole number from 1 to `MAX_LIMIT` (5 when absent, as the lab's)."""
    if raw is None:
        return 5
    text = str(raw).strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:  # ASCII: '²'.isdigit() too
        raise RequestError(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {_echo(raw)}")
    return int(text)


def _echo(value, length: int = 40) -> str:
    """A client's value quoted in a message: shortened, and ASCII (a lone surrogate is shown escaped)."""
    return ascii(str(value)[:length])


def check_item_id(raw) -> str:
    if raw is None or not str(raw).strip():
        raise RequestError("missing item_id: the product code whose similar items are asked for")
    if len(raw) > MAX_TEXT_LENGTH or not _clean(raw):
        raise RequestError(f"item_id must be a product code of at most {MAX_TEXT_LENGTH} characters, without NUL "
                           "or lone surrogates")
    return raw


def check_users(body) -> list[dict]:
    """The body of /user_embeddings: a list of customers (or one), each with city, country and creditlimit
    (the lab's names; `credit_limit` is accepted too) and optionally customer_number."""
    users = [body] if isinstance(body, dict) else body
    if not isinstance(users, list) or not users:
        raise RequestError("the body must be a non-empty JSON list of customers, each with city, country and "
                           "creditlimit")
    if len(users) > MAX_USERS:
        raise RequestError(f"at most {MAX_USERS} customers per request, not {len(users)}", status=413)
    return [_check_user(user, f"[{position}].") for position, user in enumerate(users)]


def _check_user(user, where: str) -> dict:
    if not isinstance(user, dict):
        raise RequestError(f"{where[:-1]} must be a JSON object with city, country and creditlimit")
    field = "credit_limit" if "credit_limit" in user and "creditlimit" not in user else "creditlimit"
    try:
        return check_customer(user, credit_limit=field, where=where, number_required=False)
    except EventRejected as exc:
        raise RequestError(str(exc)) from None


class LiveRecommender:
    """The online queries on the live model version. `items`: nearest items (`LiveItems`: in memory up to its
    `max_items`, else pgvector); `embedder_for(version)`: that version's user tower."""

    def __init__(self, items: LiveItems, embedder_for: Callable[[str], UserEmbedder],
                 refresh_seconds: float = 2.0) -> None:
        self.items = items
        self.embedder_for = embedder_for
        self.refresh_seconds = refresh_seconds
        self._snapshot: Snapshot | None = None
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.last_checked: float | None = None

    # --- following the live version ---------------------------------------------------------------------

    def refresh(self) -> Snapshot | None:
        """Check the live version; read a new one's tower and items before answering with it. Returns the
        snapshot now in use; `Unavailable` when the database cannot be asked and nothing is held."""
        with self._refresh_lock:
            try:
                version = self.items.active_version(self.items.item_table)
                if version is not None and (self._snapshot is None or self._snapshot.version != version):
                    embedder = self.embedder_for(version)
                    index = self.items.index_for(version)
                    self._snapshot = Snapshot(version, embedder, len(index) if index is not None else None,
                                              time.time())
                self.last_error = None if version is not None else (
                    f"no embeddings are loaded in {self.items.item_table}: materialize item_embeddings and "
                    "user_embeddings first")
            except EmbeddingsVersionChanged:
                self.last_error = "a new version went live while it was read; reading it again"
            except Exception as exc:  # noqa: BLE001 - the database or the artifacts: reported by status()
                self.last_error = _reason(exc)
            self.last_checked = time.time()
            return self._snapshot

    def start_following(self) -> None:
        """Refresh every `refresh_seconds` on a background thread until `stop_following`."""
        def follow() -> None:
            self.refresh()
            while not self._stop.wait(self.refresh_seconds):
                self.refresh()

        self._thread = threading.Thread(target=follow, name="live-version", daemon=True)
        self._thread.start()

    def stop_following(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def snapshot(self) -> Snapshot:
        """The version in use. Without one, requests do not wait on the database: the background refresh
        keeps trying (a request refreshes only when nothing ever did, as without `start_following`)."""
        snapshot = self._snapshot
        if snapshot is None and self.last_checked is None and self._thread is None:
            snapshot = self.refresh()
        if snapshot is None:
            raise Unavailable(self.last_error or "no model version is loaded yet; the service is still starting")
        return snapshot

    def status(self) -> dict:
        snapshot = self._snapshot
        return {
            "ready": snapshot is not None,
            "model_version": snapshot.version if snapshot else None,
            "items_in_memory": snapshot.in_memory if snapshot else None,
            "items_from": (None if snapshot is None else "memory" if snapshot.in_memory is not None
                           else "pgvector (HNSW)"),
            "live_version_checked_at": self.last_checked,
            "problem": self.last_error,
        }

    # --- the queries ----------------------------------------------------------------------------------

    def _answer(self, query: Callable[[Snapshot], object]) -> tuple[str, object]:
        """`query` on the current snapshot; once more on a fresh one when a new version went live meanwhile."""
        for attempt in (1, 2):
            snapshot = self.snapshot()
            try:
                return snapshot.version, query(snapshot)
            except EmbeddingsVersionChanged:
                if attempt == 2:
                    raise Unavailable("the live model version changed twice during one request; ask again") from None
                self.refresh()
            except (EmbeddingsMismatchError, QueryValueError) as exc:
                raise RequestError(str(exc)) from None
            except (RequestError, Unavailable):
                raise
            except Exception as exc:  # noqa: BLE001 - a database that cannot answer
                raise Unavailable(_reason(exc)) from None
        raise AssertionError("unreachable")

    def user_embeddings(self, body) -> tuple[str, list[dict]]:
        users = check_users(body)

        def embed(snapshot: Snapshot) -> list[dict]:
            vectors, notes = snapshot.embedder.embed(users)
            return [{"embedding": [round(float(v), 7) for v in vector], "model_version": snapshot.version,
                     "notes": user_notes} for vector, user_notes in zip(vectors, notes)]

        return self._answer(embed)

    def items_from_user(self, body, limit) -> tuple[str, list[dict]]:
        """`body`: `{"embedding": [...], "model_version": ...}` (an answer of /user_embeddings; a list of
        numbers alone is accepted too) or a customer's features."""
        limit = check_limit(limit)
        if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
            body = body[0]  # the whole answer of /user_embeddings for one customer
        elif isinstance(body, list) and body and not isinstance(body[0], dict):
            body = {"embedding": body}
        if not isinstance(body, dict):
            raise RequestError("the body must be a JSON object: {\"embedding\": [...]} (from /user_embeddings) or a "
                               "customer's city, country and creditlimit")
        if "embedding" in body:
            vector, asked_version = _check_embedding(body)
            user = None
        else:
            user, vector, asked_version = _check_user(body, ""), None, None

        def recommend(snapshot: Snapshot) -> list[dict]:
            if asked_version is not None and asked_version != snapshot.version:
                raise RequestError(f"the embedding is of model version {_echo(asked_version, 200)}, and version "
                                   f"{snapshot.version} is live: items of one version are never compared with "
                                   "another's embeddings; embed the customer again with /user_embeddings", status=409)
            query = vector if vector is not None else snapshot.embedder.embed([user])[0][0]
            found = self.items.recommend_batch(np.asarray(query, dtype=np.float32)[None, :], limit, [()],
                                               version=snapshot.version)[0]
            return [{"id": item, "score": score} for item, score in found]

        return self._answer(recommend)

    def items_from_item(self, item_id, limit) -> tuple[str, list[dict]]:
        item_id, limit = check_item_id(item_id), check_limit(limit)

        def similar(snapshot: Snapshot) -> list[dict]:
            found = self.items.similar_items_batch([item_id], limit, version=snapshot.version)[0]
            if found is None:
                raise RequestError(f"unknown item_id {_echo(item_id, 100)}: no such item in model version "
                                   f"{snapshot.version}", status=404)
            return [{"id": item, "distance": distance} for item, distance in found]

        return self._answer(similar)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_embedding(body: dict) -> tuple[np.ndarray, str | None]:
    """The embedding as float32 with a direction: every number finite within float32's range, and not all
    (or, once in float32, effectively) zero; its length is checked against the items' dimension later."""
    vector = body["embedding"]
    if not isinstance(vector, list) or not vector or len(vector) > 4096:
        raise RequestError("embedding must be a non-empty list of numbers (an answer of /user_embeddings)")
    for position, value in enumerate(vector):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -FLOAT32_MAX <= value <= FLOAT32_MAX:
            raise RequestError(f"embedding[{position}] must be a finite number within float32's range, not "
                               f"{_echo(value)}")
    as_float32 = np.asarray(vector, dtype=np.float32)
    if not np.any(as_float32) or not np.isfinite(np.linalg.norm(as_float32.astype(np.float64))):
        raise RequestError("embedding is all zeros (in float32): it has no direction to compare items with")
    version = body.get("model_version")
    if version is not None and (not isinstance(version, str) or not _clean(version) or len(version) > 200):
        raise RequestError("model_version must be the text /user_embeddings gave")
    return as_float32, version


def _reason(exc: Exception) -> str:
    """An error's message for a client or a log: its first line, no traceback (connection errors carry no
    password: `resources.credentials` masks them)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__
