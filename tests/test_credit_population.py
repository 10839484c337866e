"""The generated credit population (used when the real bank file is absent): seeded, shaped like the real data,
and with its dependence between features, so a model learns from it about as well as from the real file."""

import os

import numpy as np
import pandas as pd
import pytest

from credit_assets import population, training_data
from credit_assets.model_code import scorecard


@pytest.fixture(scope="module")
def real_applications(datasets_dir) -> pd.DataFrame:
    path = datasets_dir / "credit" / "BankCaseStudyData.csv"
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the reference data set is missing at {path} (CI=true: the comparison must run)")
        pytest.skip(f"reference data set not present at {path}")
    return training_data.read_bank_applications(path)


def validation_auc(frame: pd.DataFrame) -> float:
    development, validation = scorecard.split_frame(frame, 7)
    preprocessing, model = scorecard.fit(development)
    codes = scorecard.attribute_codes(validation, preprocessing)
    return scorecard.roc_auc(scorecard.labels(validation), scorecard.attribute_log_odds(model, codes))


def correlations(statistics: dict, label: str) -> np.ndarray:
    rows = statistics[label]["correlation"]
    return np.array([row + [0.0] * (len(rows) - len(row)) for row in rows])


def test_a_model_learns_from_generated_applications_as_from_the_real_ones(real_applications):
    generated = population.training_applications()  # as many rows as the real file
    real_auc, generated_auc = validation_auc(real_applications), validation_auc(generated)
    assert abs(generated_auc - real_auc) <= 0.05, (generated_auc, real_auc)


def test_generated_applications_keep_the_real_dependence_between_features(real_applications):
    generated = population.training_applications()
    for label in ("Accept", "Decline"):
        real, drawn = (f[f[scorecard.LABEL] == label] for f in (real_applications, generated))
        # the scores' correlation within a class, as people quote it (about 0.78 in the real data)
        assert drawn["Application_Score"].corr(drawn["Bureau_Score"]) == pytest.approx(
            real["Application_Score"].corr(real["Bureau_Score"]), abs=0.05), label
    # every pair of features, numeric and categorical, within each class (normal scores; scores' values)
    derived_real = population.derive_statistics(real_applications, calibration_rounds=0)
    derived_generated = population.derive_statistics(generated, calibration_rounds=0)
    for label in ("Accept", "Decline"):
        gap = np.abs(correlations(derived_real, label) - correlations(derived_generated, label))
        worst = np.unravel_index(gap.argmax(), gap.shape)
        assert gap.max() < 0.08, (label, [population.COPULA_VARIABLES[i] for i in worst], gap.max())


def test_the_stored_statistics_are_the_real_files(real_applications):
    """STATISTICS is what derive_statistics makes of the real file (regenerating it changes nothing)."""
    derived = population.derive_statistics(real_applications, calibration_rounds=0)
    assert derived["decline_rate"] == population.STATISTICS["decline_rate"]
    for label in ("Accept", "Decline"):
        for table in ("zero_share", "quantiles", "categories"):
            assert derived[label][table] == population.STATISTICS[label][table], (label, table)


def test_the_generator_follows_its_statistics_and_the_data_sets_codes():
    frame = population.applicants(60_000, seed=8)
    assert frame.equals(population.applicants(60_000, seed=8))  # seeded
    assert not frame.equals(population.applicants(60_000, seed=9))
    declined = frame[scorecard.LABEL] == scorecard.POSITIVE_LABEL
    assert declined.mean() == pytest.approx(population.STATISTICS["decline_rate"], abs=0.005)
    for label, rows in (("Accept", frame[~declined]), ("Decline", frame[declined])):
        stats = population.STATISTICS[label]
        for name in ("Application_Score", "Bureau_Score", "Gross_Annual_Income"):
            values = rows[name]
            assert (values == 0).mean() == pytest.approx(stats["zero_share"][name], abs=0.01), (label, name)
            median = stats["quantiles"][name][population.QUANTILE_LEVELS.index(0.5)]
            assert values[values > 0].median() == pytest.approx(median, rel=0.03), (label, name)
        shares = rows["Residential_Status"].value_counts(normalize=True)
        for category, share in stats["categories"]["Residential_Status"].items():
            assert shares.get(category, 0.0) == pytest.approx(share, abs=0.02), (label, category)
    # the data set's codes: YYMM times, scores in steps of 5, Loan_to_income from the amount and the income
    assert ((frame["Time_with_Bank"] % 100) < 12).all() and ((frame["Time_in_Employment"] % 100) < 12).all()
    assert (frame["Application_Score"] % 5 == 0).all()
    loan, income, ratio = frame["Loan_Amount"], frame["Gross_Annual_Income"], frame["Loan_to_income"]
    assert (ratio[loan == 0] == population.LOAN_TO_INCOME_NO_LOAN).all() and (loan == 0).any()
    assert (ratio[(loan > 0) & (income == 0)] == population.LOAN_TO_INCOME_MISSING).all() and (income == 0).any()
    regular = (loan > 0) & (income > 0)
    assert np.allclose(ratio[regular], (loan / income * 100)[regular], atol=0.006)
    assert frame["Loan_Payment_Frequency"].isna().any()  # missing, as in the real data
    assert set(frame["Residential_Status"]) == {"H", "O", "T", "L"}
