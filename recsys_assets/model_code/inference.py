"""SageMaker inference handlers of the two-tower recommender's user tower (PyTorch serving container).

Packed into the model's `model.tar.gz` under `code/` with `two_tower.py` and `requirements.txt` (see
`train.py`), where the container's inference toolkit imports it (`SAGEMAKER_PROGRAM=inference.py`). It
is the lab's "user embeddings" inference: customer features in, unit-length embeddings out, comparable by
cosine distance with the item embeddings of the same model version.

Requests: `application/json` with one object, a list of objects or `{"instances": [...]}`; or
`application/jsonlines` (Batch Transform with `SplitType=Line`), one object per line. Each object has
`city`, `country` and `creditlimit` (an unseen city or country is fine), and may carry
`customernumber`, which is echoed (and, for a customer the model was trained on, adds its learned id vector). Responses: `application/json` `{"embeddings": [[...], ...],
"dimension": 32}`, or `application/jsonlines` with `{"customernumber": ..., "embedding": [...]}` per line.
"""

from __future__ import annotations

import json
import math

import pandas as pd

import two_tower as tt

try:  # inside the serving container: the toolkit answers this error with its status code
    from sagemaker_inference.errors import GenericInferenceToolkitError
except ImportError:  # the platform's local backend, which reads the same status_code and message
    class GenericInferenceToolkitError(Exception):
        def __init__(self, status_code: int, message: str) -> None:
            self.status_code, self.message, self.phrase = status_code, message, message
            super().__init__(status_code, message, message)


def unsupported(content_type: str, what: str) -> GenericInferenceToolkitError:
    """415 Unsupported Media Type (the toolkit's own UnsupportedFormatError would answer 500)."""
    return GenericInferenceToolkitError(415, f"content type {content_type!r} is not supported: {what}")

JSON, JSON_LINES = "application/json", "application/jsonlines"
FEATURES = [*tt.USER_CATEGORICAL, *tt.USER_NUMERIC]


def model_fn(model_dir: str) -> tt.UserTower:
    return tt.UserTower.load(model_dir)


def _media(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def _user(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object with {', '.join(FEATURES)}, got {type(value).__name__}")
    missing = [name for name in FEATURES if value.get(name) is None]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    for name in tt.USER_CATEGORICAL:
        if not isinstance(value[name], str):
            raise ValueError(f"{where}: {name} must be text, not {type(value[name]).__name__}")
    for name in tt.USER_NUMERIC:
        number = value[name]
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise ValueError(f"{where}: {name} must be a finite number, not {number!r}")
    return value


def input_fn(request_body, content_type: str = JSON) -> pd.DataFrame:
    media = _media(content_type)
    if media not in (JSON, JSON_LINES):
        raise unsupported(content_type, "the user tower reads application/json or application/jsonlines")
    text = request_body.decode("utf-8") if isinstance(request_body, (bytes, bytearray)) else request_body
    try:
        if media == JSON_LINES:
            users = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            body = json.loads(text)
            users = body.get("instances") if isinstance(body, dict) and "instances" in body else body
            users = users if isinstance(users, list) else [users]
    except json.JSONDecodeError as exc:
        raise ValueError(f"the request is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not users:
        raise ValueError("the request holds no users")
    rows = [_user(user, f"user {number}") for number, user in enumerate(users, start=1)]
    return pd.DataFrame({**{name: [row[name] for row in rows] for name in FEATURES},
                         tt.USER_ID: [row.get(tt.USER_ID) for row in rows]})


def predict_fn(frame: pd.DataFrame, tower: tt.UserTower) -> dict:
    return {"ids": frame[tt.USER_ID].tolist(), "embeddings": tower.embed(frame), "dimension": tower.dim}


def output_fn(prediction: dict, accept: str = JSON) -> str:
    media = _media(accept)
    vectors = [[round(float(v), 7) for v in vector] for vector in prediction["embeddings"]]
    if media in (JSON, "*/*"):
        return json.dumps({"embeddings": vectors, "dimension": prediction["dimension"]})
    if media == JSON_LINES:
        return "".join(json.dumps({tt.USER_ID: identifier, "embedding": vector}) + "\n"
                       for identifier, vector in zip(prediction["ids"], vectors))
    raise unsupported(accept, "the user tower answers application/json or application/jsonlines")
