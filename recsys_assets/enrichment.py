"""Enrichment of online shopping-session events with recommendations (the lab's transformation Lambda).

Input event: `session_id`, `customer_number`, `city`, `country`, `credit_limit` and
`browse_history` (a list of `{product_code, quantity, in_shopping_cart}`). The output record is the event
as received plus:

- `recommended_items`: the top k items for the customer, `[{id, score}]` by cosine similarity,
  highest first. The customer's embedding comes from the model's user tower, computed from city, country
  and credit limit, so customers the model never saw get recommendations too; items already in the browse
  history are not recommended again.
- `similar_items`: `{product_code, similar_items: [{id, distance}]}` for one browsed item: **the first
  item in the shopping cart, or else the first item browsed**; nearest first, the item itself excluded;
  `null` when there is no browse history or the item is unknown.
- `enrichment`: `{status: "complete" | "partial", notes: [...], model_version}` saying what could not be
  done (no browse history, unknown product, city or country unseen in training).

Events that cannot be enriched at all (not JSON, too large or too deeply nested, a missing or mistyped
field, text that is not valid Unicode or holds a NUL character, numbers beyond what the model can embed)
are returned as rejections with a reason; a micro-batch never fails because of one event. Should an event
the checks let through still break a query (`ValueError`, arithmetic errors), the micro-batch is split in
halves until the event is alone, and only it is rejected. Each micro-batch makes one round trip for all
its recommendations and one for all its similar items.
"""

from __future__ import annotations

import gc
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

DEFAULT_K = 5
MAX_TEXT_LENGTH = 1_000  # session ids, cities, countries, product codes
MAX_CREDIT_LIMIT = 1e12
MAX_WHOLE_NUMBER = 2**63 - 1  # what every consumer of the output (Athena, Redshift, pandas) can hold
MAX_NESTING = 32  # of arrays and objects in an event; the lab's events have 3 levels


class EventRejected(ValueError):
    """The event cannot be enriched; the message is the reason recorded with it."""


class VectorStore(Protocol):
    """Nearest items; each query checks that the items are of `version`, the user tower's model version (and
    raises otherwise, so users of one version are never paired with items of another)."""

    def recommend_batch(self, vectors, k: int, exclude_ids: Sequence[Sequence[str]],
                        version: str | None = None) -> list[list[tuple[str, float]]]: ...

    def similar_items_batch(self, product_codes: Sequence[str], k: int,
                            version: str | None = None) -> list[list[tuple[str, float]] | None]: ...


class UserEmbedder(Protocol):
    version: str

    def embed(self, events: Sequence[dict]) -> tuple[np.ndarray, list[list[str]]]:
        """Unit vectors for the events' customers, and per event notes (e.g. unseen city)."""


# --- validation -----------------------------------------------------------------------------------------------


def _shown(value) -> str:
    """A value for a rejection reason: a scalar as JSON, at most 80 characters; an array or object by kind."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_values(event: dict) -> None:
    """Every value of the event, however deep and whatever the field, is one every consumer of the output
    can hold: nested at most `MAX_NESTING` levels, numbers finite and whole numbers within 64 bits, text
    without NUL characters or lone surrogates. Walked without recursion; where a value sits is spelled out
    only for the message of one that is refused (`path` is a chain of (parent, key) pairs)."""
    pending = [(event, 1, None)]
    while pending:
        value, depth, path = pending.pop()
        kind = type(value)
        if kind is str:
            if not _clean(value):
                _refuse_text(value, _where(path))
        elif kind is dict or kind is list:
            if depth > MAX_NESTING:
                raise EventRejected(f"nested deeper than {MAX_NESTING} levels (at {_where(path)})")
            items = value.items() if kind is dict else enumerate(value)
            for key, item in items:
                if kind is dict and not _clean(key):
                    _refuse_text(key, f"a field name in {_where(path)}")
                pending.append((item, depth + 1, (path, key)))
        elif kind is float:
            if not math.isfinite(value):
                raise EventRejected(f"{_where(path)} is not a finite number")
        elif kind is int:
            if abs(value) > MAX_WHOLE_NUMBER:
                raise EventRejected(f"{_where(path)} is a whole number beyond 64 bits")


def _where(path) -> str:
    """`the event.browse_history[0].product_code` for the chain of (parent, key) pairs `path`."""
    keys = []
    while path is not None:
        path, key = path
        keys.append(f".{key}" if isinstance(key, str) else f"[{key}]")
    return "the event" + "".join(reversed(keys))


def _clean(value: str) -> bool:
    """No NUL character and no lone surrogate (ASCII text, the usual case, is checked for NUL only)."""
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refuse_text(value: str, where: str) -> None:
    if "\x00" in value:
        raise EventRejected(f"{where} contains a NUL character")
    raise EventRejected(f"{where} is not valid Unicode text (it holds a lone surrogate)")


def _clean_text(value: str, where: str) -> None:
    if not _clean(value):
        _refuse_text(value, where)


def _valid_text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise EventRejected(f"{where} must be a non-empty string, not {_shown(value)}")
    if len(value) > MAX_TEXT_LENGTH:
        raise EventRejected(f"{where} is longer than {MAX_TEXT_LENGTH} characters ({len(value)})")
    _clean_text(value, where)
    return value


def check_customer(fields: dict, credit_limit: str = "credit_limit", where: str = "field ",
                   number_required: bool = True) -> dict:
    """The customer features the user tower embeds, checked: `customer_number` (a 64-bit integer; optional
    unless `number_required`), `city`, `country` (non-empty text) and the credit limit (a number from 0 to
    `MAX_CREDIT_LIMIT`, in the field named `credit_limit`). Returns them as the tower reads them;
    `EventRejected` names the field (prefixed with `where`) and what is wrong."""
    number = fields.get("customer_number")
    if number is None and number_required:
        raise EventRejected(f"missing {where}customer_number")
    if number is not None and (isinstance(number, bool) or not isinstance(number, int) or abs(number) > MAX_WHOLE_NUMBER):
        raise EventRejected(f"{where}customer_number must be a 64-bit integer, not {_shown(number)}")
    for name in ("city", "country"):
        if fields.get(name) is None:
            raise EventRejected(f"missing {where}{name}")
        _valid_text(fields[name], f"{where}{name}")
    limit = fields.get(credit_limit)
    if limit is None:
        raise EventRejected(f"missing {where}{credit_limit}")
    # compared, not math.isfinite(): an integer of hundreds of digits would overflow a float (OverflowError)
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 <= limit <= MAX_CREDIT_LIMIT:
        raise EventRejected(f"{where}{credit_limit} must be a number from 0 to {MAX_CREDIT_LIMIT:.0e}, not {_shown(limit)}")
    return {"customer_number": number, "city": fields["city"], "country": fields["country"], "credit_limit": limit}


def _not_json_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _text(event: dict, name: str) -> str:
    if event.get(name) is None:
        raise EventRejected(f"missing field {name}")
    return _valid_text(event[name], f"field {name}")


def parse_event(payload: bytes | str, max_bytes: int | None = None) -> dict:
    """The event as a dict after checking every field the enrichment needs; `EventRejected` says why not.
    `max_bytes`: the largest payload accepted (`MAX_EVENT_BYTES`)."""
    if max_bytes is not None and len(payload) > max_bytes:
        raise EventRejected(f"event too large: {len(payload):,} bytes, over the limit of {max_bytes:,} (MAX_EVENT_BYTES)")
    try:
        event = json.loads(payload, parse_constant=_not_json_constant)
    except RecursionError:
        raise EventRejected(f"not JSON this platform reads: nested deeper than {MAX_NESTING} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of thousands of digits
        raise EventRejected(f"not JSON: {exc.msg if hasattr(exc, 'msg') else exc}") from None
    if not isinstance(event, dict):
        raise EventRejected(f"not a JSON object but a {type(event).__name__}")
    _text(event, "session_id")
    check_customer(event)
    history = event.get("browse_history")
    if history is None:
        raise EventRejected("missing field browse_history")
    if not isinstance(history, list):
        raise EventRejected(f"field browse_history must be a list, not {type(history).__name__}")
    for position, item in enumerate(history):
        where = f"browse_history[{position}]"
        if not isinstance(item, dict):
            raise EventRejected(f"{where} must be an object")
        _valid_text(item.get("product_code"), f"{where}.product_code")
        quantity = item.get("quantity")
        # the lab's producer sends quantities as strings ("1"); numbers are accepted too
        if isinstance(quantity, bool) or not (
                (isinstance(quantity, int) and 0 <= quantity <= MAX_WHOLE_NUMBER)
                or (isinstance(quantity, str) and quantity.isascii() and quantity.isdigit() and len(quantity) <= 18)):
            raise EventRejected(f"{where}.quantity must be a whole number, not {_shown(quantity)}")
        if not isinstance(item.get("in_shopping_cart"), bool):
            raise EventRejected(f"{where}.in_shopping_cart must be true or false, not {_shown(item.get('in_shopping_cart'))}")
    _check_values(event)  # the fields not used too: the event goes out with its enrichment
    return event


def chosen_item(event: dict) -> str | None:
    """The browsed item whose similar items are added: the first in the cart, else the first browsed."""
    history = event["browse_history"]
    for item in history:
        if item["in_shopping_cart"]:
            return item["product_code"]
    return history[0]["product_code"] if history else None


# --- enrichment -----------------------------------------------------------------------------------------------


@dataclass
class Enriched:
    """What one micro-batch produced: enriched records and rejections, each with the caller's key."""

    records: list[tuple[Any, dict]] = field(default_factory=list)
    rejected: list[tuple[Any, str]] = field(default_factory=list)

    @property
    def partial(self) -> int:
        return sum(1 for _key, record in self.records if record["enrichment"]["status"] == "partial")


def enrich_batch(items: Sequence[tuple[Any, bytes]], embedder: UserEmbedder, store: VectorStore,
                 k: int = DEFAULT_K, max_bytes: int | None = None) -> Enriched:
    """Enrich a micro-batch of (key, payload) pairs; keys are passed through (stream positions, record ids).
    Payloads over `max_bytes` are rejected as too large."""
    result = Enriched()
    events: list[tuple[Any, dict]] = []
    for key, payload in items:
        try:
            events.append((key, parse_event(payload, max_bytes)))
        except EventRejected as exc:
            result.rejected.append((key, str(exc)))
    _enrich_isolating(events, embedder, store, k, result)
    return result


# What data that passed the checks can still raise (a value the database refuses, an encoding error): one
# event's fault, to be found by splitting the batch. Anything else (the database is down) fails the batch.
_DATA_ERRORS = (ValueError, ArithmeticError, RecursionError)


def _enrich_isolating(events: list[tuple[Any, dict]], embedder: UserEmbedder, store: VectorStore, k: int,
                      result: Enriched) -> None:
    if not events:
        return
    try:
        outcome = _enrich_events(events, embedder, store, k)
    except _DATA_ERRORS as exc:
        if len(events) == 1:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            result.rejected.append((events[0][0], f"enrichment failed: {type(exc).__name__}: {reason}"[:300]))
            return
        middle = len(events) // 2
        _enrich_isolating(events[:middle], embedder, store, k, result)
        _enrich_isolating(events[middle:], embedder, store, k, result)
        return
    result.records.extend(outcome.records)
    result.rejected.extend(outcome.rejected)


def _enrich_events(events: list[tuple[Any, dict]], embedder: UserEmbedder, store: VectorStore, k: int) -> Enriched:
    result = Enriched()
    vectors, notes = embedder.embed([event for _key, event in events])
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        result.rejected.extend((key, "the user tower gives no finite embedding for this customer's features")
                               for (key, _event), ok in zip(events, finite) if not ok)
        events = [pair for pair, ok in zip(events, finite) if ok]
        vectors, notes = vectors[finite], [n for n, ok in zip(notes, finite) if ok]
        if not events:
            return result
    browsed = [[item["product_code"] for item in event["browse_history"]] for _key, event in events]
    recommendations = store.recommend_batch(vectors, k, browsed, version=embedder.version)
    chosen = [chosen_item(event) for _key, event in events]
    wanted = sorted({code for code in chosen if code})
    similar = dict(zip(wanted, store.similar_items_batch(wanted, k, version=embedder.version))) if wanted else {}
    for (key, event), recommended, code, event_notes in zip(events, recommendations, chosen, notes):
        if not recommended:
            result.rejected.append((key, "no recommendations: the item embeddings table is empty"))
            continue
        event_notes = list(event_notes)
        neighbours = similar.get(code) if code else None
        if code is None:
            event_notes.append("no browse history: similar_items omitted")
        elif neighbours is None:
            event_notes.append(f"unknown product code {code!r}: similar_items omitted")
        record = dict(event)
        record["recommended_items"] = [{"id": item, "score": score} for item, score in recommended]
        record["similar_items"] = (
            {"product_code": code, "similar_items": [{"id": item, "distance": d} for item, d in neighbours]}
            if neighbours is not None else None
        )
        record["enrichment"] = {
            "status": "complete" if neighbours is not None else "partial",
            "notes": event_notes,
            "model_version": embedder.version,
        }
        result.records.append((key, record))
    return result


def enrich_in_batches(items: Sequence[tuple[Any, bytes]], embedder: UserEmbedder, store: VectorStore,
                      k: int = DEFAULT_K, batch_size: int = 500,
                      max_bytes: int | None = None) -> tuple[Enriched, list[float]]:
    """`enrich_batch` over micro-batches of `batch_size`, all outcomes together, with each batch's latency
    in milliseconds.

    The records pile up until they are written (an hour's worth), and each of Python's full garbage collections
    would scan them all: hundreds of milliseconds, again and again, about half of the time spent. So the
    automatic collector is paused meanwhile, and after each micro-batch only the young objects, that batch's,
    are collected (whatever cycles they hold); the collector is restored at the end."""
    result, latencies = Enriched(), []
    automatic = gc.isenabled()
    gc.disable()
    try:
        for start in range(0, len(items), batch_size):
            began = time.perf_counter()
            outcome = enrich_batch(items[start:start + batch_size], embedder, store, k, max_bytes)
            result.records.extend(outcome.records)
            result.rejected.extend(outcome.rejected)
            gc.collect(0)
            latencies.append((time.perf_counter() - began) * 1000)
    finally:
        if automatic:
            gc.enable()
    return result, latencies


class TowerEmbedder:
    """Customer embeddings from a model version's user tower (`NumpyUserTower`: no torch), new customers
    included, with a note for each city or country the model never saw. A customer the model was trained on
    (by `customer_number`) gets its learned id vector on top of its features' part."""

    def __init__(self, tower, version: str) -> None:
        self.tower = tower
        self.version = version

    def embed(self, events: Sequence[dict]) -> tuple[np.ndarray, list[list[str]]]:
        rows = [{"city": e["city"], "country": e["country"], "creditlimit": float(e["credit_limit"]),
                 "customernumber": e.get("customer_number")} for e in events]
        notes = [
            [f"{name} {event[name]!r} not seen in training: its features are ignored"
             for name in ("city", "country") if event[name] not in self.tower.known.get(name, ())]
            for event in events
        ]
        return self.tower.embed(rows), notes


class UserTowerUnavailable(RuntimeError):
    """A model version's user tower cannot be read; the message names the version and the file."""


def load_user_tower(read: Callable[[str], bytes], version: str, where: str, *, torch_fallback: bool = False):
    """Model version `version`'s user tower for numpy (`NumpyUserTower`), from its published files, each
    verified against the version's manifest: `read(name)` returns `ml-artifacts/<version>/<name>`
    (`ArtifactNotFoundError` when absent), `where` is that folder's URI for messages. Reads
    `model/user_tower.json`; a version published before that export existed is converted from its torch
    weights (`weights_only=True`) where torch is installed (`torch_fallback`), and refused with a message
    elsewhere (the Lambda)."""
    from recsys_assets.model_code import numpy_tower
    from resources.artifact_keys import ArtifactNotFoundError
    from resources.model_versions import verified_reader

    # each file checked against the version's manifest (`verified_reader`): a version without one, or a swapped
    # or truncated file, is refused naming it
    read = verified_reader(read, version, where, error=UserTowerUnavailable, what="user tower file")

    def required(name: str) -> bytes:
        try:
            return read(name)
        except ArtifactNotFoundError:
            raise UserTowerUnavailable(
                f"model version {version} has no {name} ({where}/{name}): enriching events needs the user tower to "
                "embed customers, new ones included") from None

    scaler = required(numpy_tower.USER_SCALER_FILE)
    try:
        export = read(numpy_tower.USER_TOWER_FILE)
    except ArtifactNotFoundError:
        if not torch_fallback:
            raise UserTowerUnavailable(
                f"model version {version} has no {numpy_tower.USER_TOWER_FILE} ({where}): it was published before "
                "the platform exported the user tower for numpy; materialize recsys_model again to publish a version "
                "with it") from None
        from recsys_assets.model_code import two_tower  # torch: only where it is installed

        files = {name: required(name) for name in (two_tower.CONFIG_FILE, two_tower.MODEL_FILE)}
        return two_tower.UserTower.from_bytes({**files, two_tower.USER_SCALER_FILE: scaler}).to_numpy()
    return numpy_tower.NumpyUserTower.from_files(
        {numpy_tower.USER_TOWER_FILE: export, numpy_tower.USER_SCALER_FILE: scaler},
        source=f"{where}/{numpy_tower.USER_TOWER_FILE}")


class NoEmbeddingsLoaded(RuntimeError):
    """The item embeddings table holds no live version: nothing can be recommended yet."""


def enrich_with_live_model(items, embedder_for: Callable[[str], UserEmbedder], store, k: int = DEFAULT_K,
                           batch_size: int = 500, max_bytes: int | None = None,
                           attempts: int = 3) -> tuple[str, Enriched, list[float]]:
    """Enrich (key, payload) items with the live model version: the user tower (`embedder_for(version)`)
    and the items always of that one version. When a new version goes live meanwhile, the queries notice
    (`EmbeddingsVersionChanged`) and everything starts again with the new one. `store`: a
    `resources.vector_queries.NearestItems`. Returns (model version, outcome, micro-batch latencies)."""
    from resources.vector_queries import EmbeddingsVersionChanged

    attempt = 1
    while True:
        version = store.active_version(store.item_table)
        if version is None:
            raise NoEmbeddingsLoaded(
                f"no embeddings are loaded in {store.item_table}: materialize item_embeddings and user_embeddings "
                "first")
        try:
            outcome, latencies = enrich_in_batches(items, embedder_for(version), store, k, batch_size, max_bytes)
            return version, outcome, latencies
        except EmbeddingsVersionChanged:
            if attempt >= attempts:  # versions changing faster than an hour is enriched: fail, retry later
                raise
            attempt += 1
