"""Enrichment of online shopping-session events with recommendations (the lab's transformation Lambda).

Input event: ``session_id``, ``customer_number``, ``city``, ``country``, ``credit_limit`` and
``browse_history`` (a list of ``{product_code, quantity, in_shopping_cart}``). The output record is the event
as received plus:

- ``recommended_items``: the top k items for the customer, ``[{id, score}]`` by cosine similarity,
  highest first. The customer's embedding comes from the model's user tower, computed from city, country
  and credit limit, so customers the model never saw get recommendations too; items already in the browse
  history are not recommended again.
- ``similar_items``: ``{product_code, similar_items: [{id, distance}]}`` for one browsed item: **the first
  item in the shopping cart, or else the first item browsed**; nearest first, the item itself excluded;
  ``null`` when there is no browse history or the item is unknown.
- ``enrichment``: ``{status: "complete" | "partial", notes: [...], model_version}`` saying what could not be
  done (no browse history, unknown product, city or country unseen in training).

Events that cannot be enriched at all (not JSON, a missing or mistyped field) are returned as rejections
with a reason; a micro-batch never fails because of one event. Each micro-batch makes one round trip for
all its recommendations and one for all its similar items.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

DEFAULT_K = 5


class EventRejected(ValueError):
    """The event cannot be enriched; the message is the reason recorded with it."""


class VectorStore(Protocol):
    def recommend_batch(self, vectors, k: int, exclude_ids: Sequence[Sequence[str]]) -> list[list[tuple[str, float]]]: ...

    def similar_items_batch(self, product_codes: Sequence[str], k: int) -> list[list[tuple[str, float]] | None]: ...


class UserEmbedder(Protocol):
    version: str

    def embed(self, events: Sequence[dict]) -> tuple[np.ndarray, list[list[str]]]:
        """Unit vectors for the events' customers, and per event notes (e.g. unseen city)."""


# --- validation -----------------------------------------------------------------------------------------------


def _text(event: dict, name: str) -> str:
    value = event.get(name)
    if value is None:
        raise EventRejected(f"missing field {name}")
    if not isinstance(value, str) or not value.strip():
        raise EventRejected(f"field {name} must be a non-empty string, not {json.dumps(value)}")
    return value


def parse_event(payload: bytes | str) -> dict:
    """The event as a dict after checking every field the enrichment needs; `EventRejected` says why not."""
    try:
        event = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EventRejected(f"not JSON: {exc.msg if hasattr(exc, 'msg') else exc}") from None
    if not isinstance(event, dict):
        raise EventRejected(f"not a JSON object but a {type(event).__name__}")
    _text(event, "session_id")
    number = event.get("customer_number")
    if number is None:
        raise EventRejected("missing field customer_number")
    if isinstance(number, bool) or not isinstance(number, int):
        raise EventRejected(f"field customer_number must be an integer, not {json.dumps(number)}")
    _text(event, "city")
    _text(event, "country")
    limit = event.get("credit_limit")
    if limit is None:
        raise EventRejected("missing field credit_limit")
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit) or limit < 0:
        raise EventRejected(f"field credit_limit must be a non-negative number, not {json.dumps(limit)}")
    history = event.get("browse_history")
    if history is None:
        raise EventRejected("missing field browse_history")
    if not isinstance(history, list):
        raise EventRejected(f"field browse_history must be a list, not {type(history).__name__}")
    for position, item in enumerate(history):
        where = f"browse_history[{position}]"
        if not isinstance(item, dict):
            raise EventRejected(f"{where} must be an object")
        code = item.get("product_code")
        if not isinstance(code, str) or not code.strip():
            raise EventRejected(f"{where}.product_code must be a non-empty string, not {json.dumps(code)}")
        quantity = item.get("quantity")
        # the lab's producer sends quantities as strings ("1"); numbers are accepted too
        if isinstance(quantity, bool) or not (isinstance(quantity, int) or (isinstance(quantity, str) and quantity.isdigit())):
            raise EventRejected(f"{where}.quantity must be a whole number, not {json.dumps(quantity)}")
        if not isinstance(item.get("in_shopping_cart"), bool):
            raise EventRejected(f"{where}.in_shopping_cart must be true or false, not {json.dumps(item.get('in_shopping_cart'))}")
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
                 k: int = DEFAULT_K) -> Enriched:
    """Enrich a micro-batch of (key, payload) pairs; keys are passed through (stream positions, record ids)."""
    result = Enriched()
    events: list[tuple[Any, dict]] = []
    for key, payload in items:
        try:
            events.append((key, parse_event(payload)))
        except EventRejected as exc:
            result.rejected.append((key, str(exc)))
    if not events:
        return result
    vectors, notes = embedder.embed([event for _key, event in events])
    browsed = [[item["product_code"] for item in event["browse_history"]] for _key, event in events]
    recommendations = store.recommend_batch(vectors, k, browsed)
    chosen = [chosen_item(event) for _key, event in events]
    wanted = sorted({code for code in chosen if code})
    similar = dict(zip(wanted, store.similar_items_batch(wanted, k))) if wanted else {}
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
                      k: int = DEFAULT_K, batch_size: int = 500) -> tuple[Enriched, list[float]]:
    """`enrich_batch` over micro-batches of `batch_size`, all outcomes together, with each batch's latency
    in milliseconds."""
    result, latencies = Enriched(), []
    for start in range(0, len(items), batch_size):
        began = time.perf_counter()
        outcome = enrich_batch(items[start:start + batch_size], embedder, store, k)
        latencies.append((time.perf_counter() - began) * 1000)
        result.records.extend(outcome.records)
        result.rejected.extend(outcome.rejected)
    return result, latencies


class TowerEmbedder:
    """Customer embeddings from the published user tower (new customers included)."""

    def __init__(self, tower, version: str) -> None:
        self.tower = tower
        self.version = version
        self.known = {name: set(values) for name, values in tower.scaler["categorical"].items()}

    def embed(self, events: Sequence[dict]) -> tuple[np.ndarray, list[list[str]]]:
        frame = pd.DataFrame({
            "city": [e["city"] for e in events],
            "country": [e["country"] for e in events],
            "creditlimit": [float(e["credit_limit"]) for e in events],
        })
        notes = [
            [f"{name} {event[name]!r} not seen in training: its features are ignored"
             for name in ("city", "country") if event[name] not in self.known.get(name, ())]
            for event in events
        ]
        return self.tower.embed(frame), notes
