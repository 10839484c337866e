"""Realistic online shopping-session events for demos and benchmarks, shaped like the lab's stream.

Customers come from the catalogue's customers, plus a share of new customers (numbers and sometimes cities
the model never saw, like customer 478 of Pasadena in the lab's record). Browse histories hold one to five
catalogue products with string quantities, as the lab's producer sends them. A chosen share of events is
broken on purpose, one way or another, to exercise the dead-letter path.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pandas as pd

NEW_CITIES = [("Pasadena", "USA"), ("Porto", "Portugal"), ("Kyoto", "Japan"), ("Valparaíso", "Chile")]
BROKEN_KINDS = ["not json", "missing credit_limit", "credit_limit as text", "browse_history not a list",
                "unknown product", "empty browse history"]


def make_events(products: list[str], customers: pd.DataFrame, n: int, *, seed: int = 0,
                new_customer_fraction: float = 0.1, broken_fraction: float = 0.0) -> list[bytes]:
    """`n` payloads; `customers` has customernumber, city, country and creditlimit columns."""
    if not products or customers.empty:
        raise ValueError("events need a catalogue: at least one product and one customer")
    rng = np.random.default_rng(seed)
    numbers = customers["customernumber"].to_numpy()
    first_new = int(numbers.max()) + 1
    payloads = []
    for _ in range(n):
        if rng.random() < new_customer_fraction:
            if rng.random() < 0.5:
                city, country = NEW_CITIES[int(rng.integers(len(NEW_CITIES)))]
            else:
                known = customers.iloc[int(rng.integers(len(customers)))]
                city, country = known["city"], known["country"]
            customer = {"customer_number": first_new + int(rng.integers(0, 10_000)), "city": city,
                        "country": country, "credit_limit": int(rng.integers(0, 150_000))}
        else:
            row = customers.iloc[int(rng.integers(len(customers)))]
            customer = {"customer_number": int(row["customernumber"]), "city": str(row["city"]),
                        "country": str(row["country"]), "credit_limit": int(float(row["creditlimit"] or 0))}
        history = [
            {"product_code": str(products[int(rng.integers(len(products)))]), "quantity": str(int(rng.integers(1, 10))),
             "in_shopping_cart": bool(rng.random() < 0.4)}
            for _ in range(int(rng.integers(1, 6)))
        ]
        event = {"session_id": str(uuid.UUID(bytes=rng.bytes(16), version=4)), **customer,
                 "browse_history": history}
        if rng.random() < broken_fraction:
            payloads.append(break_event(event, BROKEN_KINDS[int(rng.integers(len(BROKEN_KINDS)))]))
        else:
            payloads.append(json.dumps(event).encode())
    return payloads


def break_event(event: dict, kind: str) -> bytes:
    """One of the ways an event arrives broken (or only partly usable)."""
    event = dict(event)
    if kind == "not json":
        return json.dumps(event).encode()[:-7]
    if kind == "missing credit_limit":
        event.pop("credit_limit")
    elif kind == "credit_limit as text":
        event["credit_limit"] = "a lot"
    elif kind == "browse_history not a list":
        event["browse_history"] = "S10_1678"
    elif kind == "unknown product":
        event["browse_history"] = [{"product_code": "S99_0000", "quantity": "1", "in_shopping_cart": True}]
    elif kind == "empty browse history":
        event["browse_history"] = []
    return json.dumps(event).encode()
