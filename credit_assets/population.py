"""Synthetic bank population: training applications and a customers table, when no real data is at hand.

The generator mimics the public bank case-study data set (`BankCaseStudyData.csv`): the same columns,
class-conditional distributions read off that data (Accept vs Decline), the same "missing" sentinels
(Loan_to_income is -9999997 when income is zero) and about 10% Declines. A model trained on the real file
therefore scores generated customers sensibly, and a model trained on generated data learns a real signal.
Pure numpy/pandas, seeded, vectorised (a million customers in about a second).
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from credit_assets.model_code import scorecard

DECLINE_RATE = 0.1045
LOAN_TO_INCOME_MISSING = -9999997.0

# (median, sigma of log, share of zeros, upper clip) per class: (accept, decline)
_LOGNORMAL = {
    "Loan_Amount": ((3400, 1.0, 0.038, 232_100), (2200, 1.0, 0.005, 232_100)),
    "Time_with_Bank": ((610, 0.8, 0.011, 5_501), (107, 1.2, 0.181, 4_007)),
    "Time_in_Employment": ((507, 1.1, 0.056, 6_100), (200, 1.2, 0.072, 4_000)),
    "Gross_Annual_Income": ((13_000, 0.45, 0.052, 900_000), (9_500, 0.40, 0.065, 80_000)),
}
# (mean, sd, low, high) per class
_NORMAL = {
    "Application_Score": ((938, 58, 555, 1085), (765, 85, 565, 1040)),
    "Bureau_Score": ((933, 68, 636, 1058), (795, 72, 609, 1038)),
}
_CATEGORIES = {
    "Loan_Payment_Frequency": (
        {"M": 0.529, "W": 0.346, None: 0.052, "X": 0.038, "F": 0.035},
        {"W": 0.613, "M": 0.263, None: 0.066, "F": 0.031, "X": 0.027},
    ),
    "Residential_Status": ({"H": 0.664, "O": 0.201, "T": 0.129, "L": 0.006}, {"T": 0.384, "O": 0.349, "H": 0.255, "L": 0.012}),
    "Cheque_Card_Flag": ({"Y": 0.671, "N": 0.329}, {"N": 0.789, "Y": 0.211}),
    "Existing_Customer_Flag": ({"N": 0.889, "Y": 0.111}, {"N": 0.945, "Y": 0.055}),
    "Home_Telephone_Number": ({"Y": 0.974, "N": 0.026}, {"Y": 0.891, "N": 0.109}),
}


def _choose(rng: np.random.Generator, declined: np.ndarray, spec: tuple[dict, dict]) -> np.ndarray:
    out = np.empty(len(declined), dtype=object)
    for cls, table in ((False, spec[0]), (True, spec[1])):
        rows = declined == cls
        values = list(table)
        probabilities = np.array(list(table.values()), dtype=float)
        picks = rng.choice(len(values), size=int(rows.sum()), p=probabilities / probabilities.sum())
        out[rows] = np.array(values, dtype=object)[picks]
    return out


def applicants(n: int, seed: int = 0) -> pd.DataFrame:
    """`n` loan applications with the model's features and a Final_Decision label (data-set column names)."""
    rng = np.random.default_rng(seed)
    declined = rng.random(n) < DECLINE_RATE
    frame = pd.DataFrame(index=pd.RangeIndex(n))
    for name, classes in _NORMAL.items():
        values = np.empty(n)
        for cls, (mean, sd, low, high) in ((False, classes[0]), (True, classes[1])):
            rows = declined == cls
            values[rows] = np.clip(rng.normal(mean, sd, rows.sum()), low, high)
        frame[name] = np.rint(values).astype("int64")
    for name, classes in _LOGNORMAL.items():
        values = np.empty(n)
        for cls, (median, sigma, zeros, high) in ((False, classes[0]), (True, classes[1])):
            rows = declined == cls
            drawn = np.clip(np.exp(rng.normal(np.log(median), sigma, rows.sum())), 0, high)
            drawn[rng.random(rows.sum()) < zeros] = 0
            values[rows] = drawn
        frame[name] = np.rint(values).astype("int64")
    income = frame["Gross_Annual_Income"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.round(frame["Loan_Amount"].to_numpy() / income * 100, 2)
    frame["Loan_to_income"] = np.where(income > 0, ratio, LOAN_TO_INCOME_MISSING)
    for name, spec in _CATEGORIES.items():
        frame[name] = _choose(rng, declined, spec)
    frame[scorecard.LABEL] = np.where(declined, scorecard.POSITIVE_LABEL, "Accept")
    return frame[scorecard.FEATURES + [scorecard.LABEL]]


def training_applications(n: int = 24_859, seed: int = 20061206) -> pd.DataFrame:
    """A stand-in for BankCaseStudyData.csv: features, label and an 80/20 Development/Validation split."""
    frame = applicants(n, seed)
    rng = np.random.default_rng(seed + 1)
    frame[scorecard.SPLIT] = np.where(rng.random(n) < 0.8, "Development", "Validation")
    return frame


def customers(n: int, seed: int = 42, first_id: int = 1, as_of: date | None = None) -> pd.DataFrame:
    """`n` rows for the customers table (snake-case columns), none decided yet.

    `current_score` is the bank's last score on the 600-at-30:1 scale (correlated with the application
    score); `current_limit` a credit limit in multiples of 500. With the default policy about 45% of
    customers are eligible for a limit review.
    """
    rng = np.random.default_rng(seed)
    people = applicants(n, seed + 7)
    out = pd.DataFrame({"customer_id": np.arange(first_id, first_id + n, dtype="int64")})
    as_of = as_of or date(2026, 11, 1)
    days_back = rng.integers(30, 3 * 365, n)
    out["application_date"] = pd.to_datetime(as_of) - pd.to_timedelta(days_back, unit="D")
    out["application_date"] = out["application_date"].dt.date
    noise = rng.normal(0, 22, n)
    out["current_score"] = np.rint(600 + (people["Application_Score"].to_numpy() - 905) / 2.2 + noise).astype("int64")
    limits = np.clip(np.exp(rng.normal(np.log(5000), 0.55, n)), 500, 25_000)
    out["current_limit"] = (np.rint(limits / 500) * 500).astype("int64")
    for feature in scorecard.FEATURES:
        out[scorecard.column_for(feature)] = people[feature].to_numpy()
    return out
