"""Synthetic bank population: training applications and a customers table, when no real data is at hand.

The generator mimics the public bank case-study data set (`BankCaseStudyData.csv`), which users' machines
do not have: the same columns, the same "missing" codes (Loan_to_income is -9999997 when the income is zero
and -9999998 when the loan amount is), about 10% Declines, and, per class (Accept, Decline), the real
data's marginal distributions *and the dependence between the features*: a Gaussian copula. Per class,
`STATISTICS` holds each numeric feature's share of zeros and a quantile table of its positive values, each
categorical feature's category frequencies, and the correlation matrix of the features' normal scores (a
categorical feature enters through a latent normal cut at its cumulative frequencies, its categories in the
order of their overall decline rates). An application is drawn as a correlated normal vector, mapped
through the normal CDF and each feature's inverse distribution. Loan_to_income is computed from the loan
amount and the income, as in the real data; the two Time_ features are the data set's YYMM codes (years and
months), drawn in months.

So a model trained on generated applications is about as good as one trained on the real file (the
scorecard's validation AUC is within a few hundredths), and Application_Score and Bureau_Score correlate
within a class as they do there (about 0.78). Pure numpy/pandas (and scipy's normal CDF), seeded,
vectorised (a million customers in about a second).

`STATISTICS` was computed once from the real file (all 24,859 rows) by `derive_statistics`; to regenerate
it, `scripts/credit_population_statistics.py ../shared/datasets/credit/BankCaseStudyData.csv` prints the
table to paste here (a test checks that it still matches the file).
"""

from __future__ import annotations

import json
import sys
from datetime import date
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from credit_assets.model_code import scorecard

DECLINE_RATE = 0.1045
LOAN_TO_INCOME_MISSING = -9999997.0  # the income is zero
LOAN_TO_INCOME_NO_LOAN = -9999998.0  # the loan amount is zero

# the copula's numeric variables (Loan_to_income is derived from two of them), then the categorical ones
COPULA_NUMERIC = ["Application_Score", "Bureau_Score", "Loan_Amount", "Time_with_Bank", "Time_in_Employment",
                  "Gross_Annual_Income"]
COPULA_VARIABLES = COPULA_NUMERIC + scorecard.CATEGORICAL_FEATURES
MONTH_CODED = ("Time_with_Bank", "Time_in_Employment")  # YYMM: years * 100 + months (0-12)
LINEAR_SCALE = ("Application_Score", "Bureau_Score")  # their correlation is the values' (see _dependence)
ROUNDING = {"Application_Score": 5, "Bureau_Score": 1, "Loan_Amount": 100, "Time_with_Bank": 1,
            "Time_in_Employment": 1, "Gross_Annual_Income": 100}
# the probabilities of the quantile tables (finer in the tails)
QUANTILE_LEVELS = [0.0, 0.01, 0.025, 0.05] + [round(0.05 * k, 2) for k in range(2, 19)] + [0.95, 0.975, 0.99, 1.0]
MISSING_CATEGORY = ""  # an empty value in the data set: missing

# Derived from BankCaseStudyData.csv (24,859 applications) by derive_statistics(); regenerate with
# `scripts/credit_population_statistics.py <path to BankCaseStudyData.csv>`. Per class: zero shares and quantiles
# of the positive values (Time_ features in months), category frequencies (in latent order) and the
# normal-score correlation matrix of COPULA_VARIABLES.
STATISTICS = {
    "decline_rate": 0.1045,
    "Accept": {
        "zero_share": {"Application_Score": 0.0, "Bureau_Score": 0.0, "Loan_Amount": 0.0376, "Time_with_Bank": 0.0108, "Time_in_Employment": 0.0556, "Gross_Annual_Income": 0.0516},
        "quantiles": {
            "Application_Score": [555.0, 695.0, 740.0, 820.0, 860.0, 880.0, 895.0, 905.0, 920.0, 925.0, 935.0, 945.0, 950.0, 960.0, 965.0, 970.0, 980.0, 980.0, 985.0, 985.0, 995.0, 1010.0, 1025.0, 1050.0, 1085.0],
            "Bureau_Score": [636.0, 751.0, 791.52, 813.0, 834.0, 848.15, 869.0, 883.0, 900.0, 912.0, 917.0, 931.0, 941.0, 947.0, 959.0, 970.0, 973.0, 983.0, 995.0, 1002.0, 1013.0, 1027.0, 1032.0, 1042.39, 1058.0],
            "Loan_Amount": [1.0, 500.0, 540.0, 652.0, 1000.0, 1084.0, 1500.0, 1700.0, 2000.0, 2440.75, 3000.0, 3000.0, 3500.0, 4000.0, 4558.0, 5000.0, 5500.0, 6100.0, 7154.0, 9000.0, 10000.0, 24300.0, 50800.0, 87700.0, 232100.0],
            "Time_with_Bank": [1.0, 3.0, 6.0, 12.0, 19.0, 25.0, 32.0, 40.0, 48.0, 56.0, 65.0, 75.0, 85.0, 96.0, 107.0, 119.0, 132.0, 143.0, 148.0, 151.0, 155.0, 161.0, 210.0, 290.0, 661.0],
            "Time_in_Employment": [1.0, 1.0, 2.0, 4.0, 10.0, 14.0, 24.0, 29.0, 36.0, 45.0, 54.0, 60.0, 72.0, 84.0, 103.0, 120.0, 132.0, 156.0, 180.0, 216.0, 240.0, 299.6, 336.0, 384.0, 732.0],
            "Gross_Annual_Income": [360.0, 3382.4, 5000.0, 6000.0, 7400.0, 8265.6, 9000.0, 10000.0, 10400.0, 11000.0, 12000.0, 12500.0, 13500.0, 14317.0, 15000.0, 16000.0, 17500.0, 19000.0, 20500.0, 23000.0, 26000.0, 30000.0, 36000.0, 47000.0, 900000.0],
        },
        "categories": {
            "Loan_Payment_Frequency": {"M": 0.5293, "X": 0.0378, "F": 0.0358, "": 0.0516, "W": 0.3455},
            "Residential_Status": {"H": 0.6635, "O": 0.201, "L": 0.0058, "T": 0.1296},
            "Cheque_Card_Flag": {"": 0.0001, "Y": 0.6713, "N": 0.3286},
            "Existing_Customer_Flag": {"Y": 0.1109, "N": 0.8891},
            "Home_Telephone_Number": {"Y": 0.9742, "N": 0.0258},
        },
        "correlation": [  # lower triangle, rows and columns in COPULA_VARIABLES order
            [1.0],
            [0.819, 1.0],
            [-0.031, 0.09, 1.0],
            [0.504, 0.618, 0.066, 1.0],
            [0.418, 0.365, 0.123, 0.301, 1.0],
            [0.333, 0.38, 0.223, 0.218, 0.499, 1.0],
            [-0.37, -0.43, -0.059, -0.183, -0.181, -0.408, 1.0],
            [-0.514, -0.523, -0.1, -0.345, -0.375, -0.394, 0.216, 1.0],
            [-0.694, -0.605, -0.111, -0.356, -0.217, -0.419, 0.401, 0.449, 1.0],
            [-0.182, -0.2, -0.089, -0.03, -0.12, -0.37, 0.303, 0.258, 0.333, 1.0],
            [-0.283, -0.235, -0.082, -0.134, -0.1, -0.207, 0.18, 0.316, 0.282, 0.124, 1.0],
        ],
    },
    "Decline": {
        "zero_share": {"Application_Score": 0.0, "Bureau_Score": 0.0, "Loan_Amount": 0.0054, "Time_with_Bank": 0.1806, "Time_in_Employment": 0.0724, "Gross_Annual_Income": 0.0655},
        "quantiles": {
            "Application_Score": [565.0, 640.0, 645.0, 665.0, 670.0, 675.0, 685.0, 695.0, 695.0, 705.0, 710.0, 720.0, 730.0, 745.0, 765.0, 785.0, 810.0, 830.0, 850.0, 875.0, 895.0, 935.0, 960.0, 980.0, 1040.0],
            "Bureau_Score": [609.0, 651.96, 676.0, 692.0, 714.0, 728.0, 739.0, 747.0, 753.0, 763.0, 771.0, 777.0, 784.0, 791.0, 798.0, 803.0, 808.0, 817.0, 831.0, 851.0, 882.0, 920.4, 951.0, 983.04, 1038.0],
            "Loan_Amount": [250.0, 500.0, 500.0, 500.0, 543.0, 700.0, 1000.0, 1000.0, 1084.0, 1500.0, 1600.0, 2000.0, 2200.0, 2705.0, 3000.0, 3418.0, 4000.0, 4700.0, 5000.0, 7000.0, 9345.6, 24300.0, 43500.0, 79048.0, 232100.0],
            "Time_with_Bank": [1.0, 1.0, 1.0, 2.0, 4.0, 5.0, 7.0, 9.0, 12.0, 16.0, 19.0, 23.0, 24.0, 24.0, 27.0, 31.0, 35.0, 41.0, 52.0, 63.0, 88.0, 126.0, 150.0, 157.0, 487.0],
            "Time_in_Employment": [1.0, 1.0, 1.0, 2.0, 4.0, 6.0, 7.0, 9.0, 12.0, 14.0, 18.0, 24.0, 25.0, 30.0, 36.0, 44.0, 51.0, 60.0, 72.0, 95.6, 120.0, 168.0, 216.0, 287.04, 480.0],
            "Gross_Annual_Income": [750.0, 2835.6, 3600.0, 4500.0, 5512.0, 6240.0, 7000.0, 7500.0, 7951.8, 8320.0, 8982.4, 9307.0, 9880.0, 10000.0, 10500.0, 11440.0, 12000.0, 12500.0, 13200.0, 14400.0, 15455.0, 19981.1, 24000.0, 28000.0, 80000.0],
        },
        "categories": {
            "Loan_Payment_Frequency": {"M": 0.2634, "X": 0.0273, "F": 0.0308, "": 0.0655, "W": 0.613},
            "Residential_Status": {"H": 0.2557, "O": 0.3489, "L": 0.0116, "T": 0.3839},
            "Cheque_Card_Flag": {"": 0.0, "Y": 0.211, "N": 0.789},
            "Existing_Customer_Flag": {"Y": 0.0547, "N": 0.9453},
            "Home_Telephone_Number": {"Y": 0.8914, "N": 0.1086},
        },
        "correlation": [  # lower triangle, rows and columns in COPULA_VARIABLES order
            [1.0],
            [0.818, 1.0],
            [0.057, 0.008, 1.0],
            [0.413, 0.535, 0.039, 1.0],
            [0.26, 0.075, 0.156, 0.102, 1.0],
            [0.112, 0.036, 0.258, -0.008, 0.453, 1.0],
            [-0.234, -0.272, -0.065, -0.101, -0.034, -0.098, 1.0],
            [-0.357, -0.208, -0.147, -0.054, -0.229, -0.237, 0.17, 1.0],
            [-0.49, -0.355, -0.179, -0.171, -0.147, -0.315, 0.301, 0.329, 1.0],
            [-0.134, -0.08, -0.174, 0.084, -0.122, -0.305, 0.298, 0.24, 0.451, 1.0],
            [-0.342, -0.077, -0.106, -0.028, -0.094, -0.122, 0.132, 0.349, 0.256, 0.228, 1.0],
        ],
    },
}






# --- deriving the statistics from the real file (once; the generator never reads it) ---------------------


def _months(values: np.ndarray) -> np.ndarray:
    return (values // 100) * 12 + values % 100


def _normal_scores(values: pd.Series) -> np.ndarray:
    """Normal scores of the values' mid-ranks (ties share one score)."""
    from scipy.special import ndtri

    ranks = values.rank(method="average").to_numpy()
    return ndtri((ranks - 0.5) / len(values))


def _dependence(columns: dict[str, np.ndarray], orders: dict[str, list[str]]) -> np.ndarray:
    """The correlations of COPULA_VARIABLES the generator reproduces: between the two scores, of their values
    (as people quote it: about 0.78 within a class); otherwise of the normal scores of the values (Time_ in
    months, zeros included) or of the categories' positions in `orders` (zero masses and heavy tails make
    correlations of the values themselves meaningless there)."""
    scores = []
    for name in COPULA_VARIABLES:
        values = columns[name]
        if name in orders:
            values = pd.Categorical(values, categories=orders[name]).codes
        scores.append(_normal_scores(pd.Series(values)))
    matrix = np.corrcoef(np.column_stack(scores), rowvar=False)
    linear = [COPULA_VARIABLES.index(name) for name in LINEAR_SCALE]
    values = np.column_stack([columns[name].astype("float64") for name in LINEAR_SCALE])
    matrix[np.ix_(linear, linear)] = np.corrcoef(values, rowvar=False)
    return matrix


def _calibrated(target: np.ndarray, block: dict, orders: dict[str, list[str]], rounds: int = 4,
                sample: int = 200_000) -> np.ndarray:
    """The latent correlation whose draws show the correlation `target` (see `_dependence`): the way from the
    latent normals to the values (the marginals' shapes, ties, categories) changes a correlation, so the
    latent one is adjusted until the drawn data's matches (a few fixed-point rounds on a seeded sample)."""
    latent = target.copy()
    for _ in range(rounds):
        drawn = _draw_class(np.random.default_rng(0), sample, block, _cholesky_of(latent))
        columns = {**drawn, **{n: np.array([MISSING_CATEGORY if v is None else v for v in drawn[n]], dtype=object)
                               for n in scorecard.CATEGORICAL_FEATURES}}
        latent = _valid_correlation(latent + target - _dependence(columns, orders))
    return latent


def derive_statistics(frame: pd.DataFrame, calibration_rounds: int = 4) -> dict:
    """The generator's per-class statistics from bank applications (data-set columns and `Final_Decision`);
    without calibration rounds, the correlations are the data's own rather than the copula's."""
    declined = frame[scorecard.LABEL] == scorecard.POSITIVE_LABEL
    orders = {}  # categories from the lowest decline rate to the highest
    for name in scorecard.CATEGORICAL_FEATURES:
        values = frame[name].fillna(MISSING_CATEGORY).astype(str).str.strip()
        orders[name] = [str(v) for v in declined.groupby(values).mean().sort_values(kind="stable").index]
    out = {"decline_rate": round(float(declined.mean()), 4)}
    for label in ("Accept", scorecard.POSITIVE_LABEL):
        rows = frame[frame[scorecard.LABEL] == label]
        zero_share, quantiles, categories, columns = {}, {}, {}, {}
        for name in COPULA_NUMERIC:
            values = pd.to_numeric(rows[name]).to_numpy(dtype="float64")
            if name in MONTH_CODED:
                values = _months(values)
            zero_share[name] = round(float((values <= 0).mean()), 4)
            quantiles[name] = [round(float(q), 2) for q in np.quantile(values[values > 0], QUANTILE_LEVELS)]
            columns[name] = values
        for name in scorecard.CATEGORICAL_FEATURES:
            values = rows[name].fillna(MISSING_CATEGORY).astype(str).str.strip()
            shares = values.value_counts(normalize=True).reindex(orders[name], fill_value=0.0)
            categories[name] = {str(k): round(float(v), 4) for k, v in shares.items()}
            columns[name] = values.to_numpy(dtype=object)
        block = {"zero_share": zero_share, "quantiles": quantiles, "categories": categories}
        latent = _calibrated(_dependence(columns, orders), block, orders, rounds=calibration_rounds)
        out[label] = {**block, "correlation": [[round(float(v), 3) for v in row[:i + 1]]
                                               for i, row in enumerate(latent)]}
    return out


def format_statistics(statistics: dict) -> str:
    """`statistics` as the Python literal STATISTICS (one line per table)."""
    lines = ["STATISTICS = {", f'    "decline_rate": {statistics["decline_rate"]},']
    for label in ("Accept", scorecard.POSITIVE_LABEL):
        block = statistics[label]
        lines.append(f'    "{label}": {{')
        lines.append(f'        "zero_share": {json.dumps(block["zero_share"])},')
        lines.append('        "quantiles": {')
        lines += [f'            "{name}": {json.dumps(values)},' for name, values in block["quantiles"].items()]
        lines.append("        },")
        lines.append('        "categories": {')
        lines += [f'            "{name}": {json.dumps(values)},' for name, values in block["categories"].items()]
        lines.append("        },")
        lines.append('        "correlation": [  # lower triangle, rows and columns in COPULA_VARIABLES order')
        lines += [f"            {json.dumps(row)}," for row in block["correlation"]]
        lines.append("        ],")
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines)


# --- sampling ----------------------------------------------------------------------------------------------


def _valid_correlation(matrix: np.ndarray) -> np.ndarray:
    """The nearest positive definite matrix with a unit diagonal (eigenvalues clipped), e.g. after rounding."""
    matrix = (matrix + matrix.T) / 2
    eigenvalues, vectors = np.linalg.eigh(matrix)
    matrix = (vectors * np.clip(eigenvalues, 1e-4, None)) @ vectors.T
    scale = np.sqrt(np.diag(matrix))
    return matrix / np.outer(scale, scale)


def _cholesky_of(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.cholesky(_valid_correlation(matrix))


@lru_cache(maxsize=None)
def _cholesky(label: str) -> np.ndarray:
    rows = STATISTICS[label]["correlation"]
    matrix = np.zeros((len(rows), len(rows)))
    for i, row in enumerate(rows):
        matrix[i, :i + 1] = row
    return _cholesky_of(matrix + np.tril(matrix, -1).T)


def _draw_class(rng: np.random.Generator, n: int, stats: dict, cholesky: np.ndarray) -> dict[str, np.ndarray]:
    """`n` applications of one class from its copula: numbers (Time_ in months) and category labels."""
    from scipy.special import ndtr

    latent = rng.standard_normal((n, len(COPULA_VARIABLES))) @ cholesky.T
    uniform = ndtr(latent)
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(COPULA_NUMERIC):
        u, zero = uniform[:, j], stats["zero_share"][name]
        positive = np.interp((u - zero) / (1 - zero), QUANTILE_LEVELS, stats["quantiles"][name])
        step = ROUNDING[name]
        out[name] = np.where(u < zero, 0.0, np.maximum(np.rint(positive / step) * step, step))
    for j, name in enumerate(scorecard.CATEGORICAL_FEATURES, start=len(COPULA_NUMERIC)):
        table = stats["categories"][name]
        cumulative = np.cumsum(list(table.values()))
        picks = np.minimum(np.searchsorted(cumulative / cumulative[-1], uniform[:, j], side="right"), len(table) - 1)
        labels = np.array([None if value == MISSING_CATEGORY else value for value in table], dtype=object)
        out[name] = labels[picks]
    return out


def applicants(n: int, seed: int = 0) -> pd.DataFrame:
    """`n` loan applications with the model's features and a Final_Decision label (data-set column names)."""
    rng = np.random.default_rng(seed)
    declined = rng.random(n) < STATISTICS["decline_rate"]
    columns: dict[str, np.ndarray] = {}
    for label, rows in (("Accept", ~declined), (scorecard.POSITIVE_LABEL, declined)):
        drawn = _draw_class(rng, int(rows.sum()), STATISTICS[label], _cholesky(label))
        for name, values in drawn.items():
            if name not in columns:
                columns[name] = np.empty(n, dtype=values.dtype)
            columns[name][rows] = values
    frame = pd.DataFrame(index=pd.RangeIndex(n))
    for name in COPULA_NUMERIC:
        values = columns.get(name, np.zeros(n))
        if name in MONTH_CODED:  # months -> YYMM
            values = (values // 12) * 100 + values % 12
        frame[name] = values.astype("int64")
    loan, income = frame["Loan_Amount"].to_numpy(dtype=float), frame["Gross_Annual_Income"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.round(loan / income * 100, 2)
    frame["Loan_to_income"] = np.where(loan <= 0, LOAN_TO_INCOME_NO_LOAN,
                                       np.where(income <= 0, LOAN_TO_INCOME_MISSING, ratio))
    for name in scorecard.CATEGORICAL_FEATURES:
        frame[name] = columns.get(name, np.full(n, None, dtype=object))
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


def main(argv: list[str] | None = None) -> int:
    """Print STATISTICS derived from the real file (the path in argv)."""
    from credit_assets.training_data import read_bank_applications

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: scripts/credit_population_statistics.py <path to BankCaseStudyData.csv>", file=sys.stderr)
        return 2
    print(format_statistics(derive_statistics(read_bank_applications(Path(args[0])))))
    return 0
