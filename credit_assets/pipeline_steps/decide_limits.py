"""SageMaker Processing entry point of the exported credit pipeline's DecideLimits step.

Inputs (processing channels): `scores` (Batch Transform output: `customer_id,probability,score` lines)
and `limits` (CSV with header `customer_id,current_score,current_limit`). Output: `decisions.csv` with
the reference's rule applied by the same code the Dagster asset uses (`policy.py` is shipped beside this
script). Thresholds come from the environment (POLICY_APPROVE_MIN_SCORE, ...), set by the pipeline step.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

from policy import LimitPolicy, decide_limits

BASE = "/opt/ml/processing"


def policy_from_env() -> LimitPolicy:
    return LimitPolicy.from_env(os.environ)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scores", default=f"{BASE}/input/scores")
    parser.add_argument("--limits", default=f"{BASE}/input/limits")
    parser.add_argument("--output", default=f"{BASE}/output")
    args = parser.parse_args(argv)
    score_files = sorted(Path(args.scores).rglob("*.out"))
    limit_files = sorted(Path(args.limits).rglob("*.csv"))
    if not score_files or not limit_files:
        print(f"no scores ({args.scores}) or no current limits ({args.limits})", file=sys.stderr)
        return 1
    scores = pd.concat([pd.read_csv(p, header=None, names=["customer_id", "probability", "new_score"]) for p in score_files])
    limits = pd.concat([pd.read_csv(p) for p in limit_files])
    decisions = decide_limits(scores.merge(limits, on="customer_id", how="inner"), policy_from_env())
    Path(args.output).mkdir(parents=True, exist_ok=True)
    decisions.to_csv(Path(args.output) / "decisions.csv", index=False)
    print(f"{len(decisions)} decisions, {int((decisions.decision == 'APPROVED').sum())} approved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
