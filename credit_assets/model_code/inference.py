"""SageMaker inference entry point for the credit scorecard (Batch Transform, PyTorch serving toolkit).

Request body: CSV lines without header, ``customer_id`` followed by the model features in
``scorecard.FEATURES`` order. Response: CSV lines ``customer_id,probability,score`` in the same order, so
the batch output joins back to customers without relying on line positions.
"""

from __future__ import annotations

import io

import pandas as pd

import scorecard

ID_COLUMN = "customer_id"
INPUT_COLUMNS = [ID_COLUMN] + scorecard.FEATURES


def model_fn(model_dir: str) -> scorecard.ScorecardBundle:
    return scorecard.ScorecardBundle(model_dir)


def input_fn(request_body, content_type: str = "text/csv") -> pd.DataFrame:
    if content_type != "text/csv":
        raise ValueError(f"unsupported content type {content_type!r}; send text/csv")
    if isinstance(request_body, (bytes, bytearray)):
        request_body = request_body.decode("utf-8")
    frame = pd.read_csv(
        io.StringIO(request_body), header=None, names=INPUT_COLUMNS,
        dtype={**{c: "string" for c in scorecard.CATEGORICAL_FEATURES}, ID_COLUMN: "int64"},
        keep_default_na=False, na_values={c: [""] for c in scorecard.FEATURES},
    )
    return frame


def predict_fn(frame: pd.DataFrame, bundle: scorecard.ScorecardBundle) -> pd.DataFrame:
    probability, score = bundle.score(frame)
    return pd.DataFrame({ID_COLUMN: frame[ID_COLUMN].to_numpy(), "probability": probability, "score": score})


def output_fn(prediction: pd.DataFrame, accept: str = "text/csv") -> str:
    if accept != "text/csv":
        raise ValueError(f"unsupported accept type {accept!r}; ask for text/csv")
    return prediction.to_csv(header=False, index=False, float_format="%.8g")
