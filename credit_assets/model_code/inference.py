"""SageMaker inference handlers of the credit scorecard (PyTorch serving container, Batch Transform).

Packed into the model's `model.tar.gz` under `code/` with `scorecard.py` and `requirements.txt`
(see `train.py`), where the container's inference toolkit imports it (`SAGEMAKER_PROGRAM=inference.py`).

Request body (`text/csv`): lines without header, `customer_id` followed by the model features in
`scorecard.FEATURES` order. Response (`text/csv`): lines `customer_id,probability,score` in the same
order, so the batch output joins back to customers without relying on line positions.
"""

from __future__ import annotations

import csv
import io

import pandas as pd

import scorecard

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

CSV = "text/csv"
ID_COLUMN = "customer_id"
INPUT_COLUMNS = [ID_COLUMN] + scorecard.FEATURES


def model_fn(model_dir: str) -> scorecard.ScorecardBundle:
    return scorecard.ScorecardBundle(model_dir)


def _check_rows(text: str) -> None:
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if row and len(row) != len(INPUT_COLUMNS):
            raise ValueError(f"request line {number} has {len(row)} fields, expected {len(INPUT_COLUMNS)} "
                             f"({', '.join(INPUT_COLUMNS)})")


def input_fn(request_body, content_type: str = CSV) -> pd.DataFrame:
    if content_type.split(";")[0].strip() != CSV:
        raise unsupported(content_type, "the scorecard reads text/csv")
    if isinstance(request_body, (bytes, bytearray)):
        request_body = request_body.decode("utf-8")
    _check_rows(request_body)
    frame = pd.read_csv(
        io.StringIO(request_body), header=None, names=INPUT_COLUMNS,
        dtype={**{c: "string" for c in scorecard.CATEGORICAL_FEATURES}, ID_COLUMN: "int64"},
        keep_default_na=False, na_values={c: [""] for c in scorecard.FEATURES},
    )
    return frame


def predict_fn(frame: pd.DataFrame, bundle: scorecard.ScorecardBundle) -> pd.DataFrame:
    probability, score = bundle.score(frame)
    return pd.DataFrame({ID_COLUMN: frame[ID_COLUMN].to_numpy(), "probability": probability, "score": score})


def output_fn(prediction: pd.DataFrame, accept: str = CSV) -> str:
    if accept.split(";")[0].strip() not in (CSV, "*/*"):
        raise unsupported(accept, "the scorecard answers text/csv")
    return prediction.to_csv(header=False, index=False, float_format="%.8g")
