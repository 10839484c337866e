"""Session events for the streaming tests, good and poisonous. (The small trained model they enrich with is
`benchmarks.harness.publish_and_load`, shared with the benchmarks.)"""

import json

# --- session events, good and poisonous ------------------------------------------------------------------

GOOD = {"session_id": "s-1", "customer_number": 103, "city": "Nantes", "country": "France", "credit_limit": 21000,
        "browse_history": [{"product_code": "S10_1678", "quantity": "1", "in_shopping_cart": True}]}


def nested(depth: int) -> bytes:
    return b'{"session_id": "s", "deep": ' + b"[" * depth + b"]" * depth + b"}"


def with_history(code: str) -> dict:
    return {**GOOD, "browse_history": [{"product_code": code, "quantity": "1", "in_shopping_cart": True}]}


# Each of these failed a whole micro-batch (and so a whole hour, or a whole Firehose invocation) before.
POISON = {
    "deeply nested": (nested(1_500), "nested deeper than 32 levels"),
    "nested just inside the parser's limit, as the session id": (
        b'{"session_id": ' + b"[" * 500 + b"]" * 500 + b"}", "field session_id must be a non-empty string, not an array"),
    "nested 40 levels in a field nobody reads": (json.dumps({**GOOD, "extra": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}).encode(),
                                                 "nested deeper than 32 levels"),
    "NaN in a field nobody reads": (json.dumps(GOOD)[:-1].encode() + b', "extra": NaN}', "NaN is not a JSON value"),
    "1e400 in a field nobody reads": (json.dumps(GOOD)[:-1].encode() + b', "extra": 1e400}', "extra is not a finite number"),
    "NUL in a field nobody reads": (json.dumps({**GOOD, "extra": "a\u0000b"}).encode(), "extra contains a NUL character"),
    "NUL in a product code": (json.dumps(with_history("S10_\u0000")).encode(), "product_code contains a NUL character"),
    "NUL in the city": (json.dumps({**GOOD, "city": "Nan\u0000tes"}).encode(), "field city contains a NUL character"),
    "lone surrogate in a product code": (json.dumps(with_history("S10_\ud800")).encode(),
                                         "product_code is not valid Unicode text"),
    "lone surrogate in the country": (json.dumps({**GOOD, "country": "Fran\udc00ce"}).encode(),
                                      "field country is not valid Unicode text"),
    "credit limit 1e308": (json.dumps({**GOOD, "credit_limit": 1e308}).encode(),
                           "field credit_limit must be a number from 0 to 1e+12, not 1e+308"),
    "a 5,000-digit customer number": (
        b'{"session_id": "s", "customer_number": ' + b"9" * 5_000 + b', "city": "a"}', "not JSON"),
    "a 1e400 credit limit": (json.dumps(GOOD).replace("21000", "1e400").encode(), "must be a number from 0"),
    "a credit limit of 400 digits": (json.dumps(GOOD).replace("21000", "9" * 400).encode(),
                                     "field credit_limit must be a number from 0 to 1e+12"),
    "a quantity of 10^40": (json.dumps({**GOOD, "browse_history": [
        {"product_code": "S10_1678", "quantity": 10**40, "in_shopping_cart": True}]}).encode(),
        "browse_history[0].quantity must be a whole number"),
    "too large": (json.dumps({**GOOD, "padding": "x" * 20_000}).encode(), "event too large: 20,"),
}
