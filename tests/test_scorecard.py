"""Scorecard maths, preprocessing and the training-data readers (plain Python, no Dagster)."""

import math

import numpy as np
import pandas as pd
import pytest

from credit_assets import population, training_data
from credit_assets.model_code import scorecard


def test_scaling_matches_the_reference_formula():
    scale = scorecard.scaling()  # PDO 20, 600 at odds 30
    assert scale["factor"] == pytest.approx(20 / math.log(2))
    assert scale["offset"] == pytest.approx(600 - 20 / math.log(2) * math.log(30))
    # good:bad odds of 30 -> log-odds of Decline = ln(1/30) -> exactly the target score
    assert scorecard.scores_from_log_odds(np.array([math.log(1 / 30)]), scale)[0] == 600
    # doubling the odds adds PDO points
    assert scorecard.scores_from_log_odds(np.array([math.log(1 / 60)]), scale)[0] == 620


def test_roc_auc_with_ties():
    labels = np.array([0, 0, 1, 1])
    assert scorecard.roc_auc(labels, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert scorecard.roc_auc(labels, np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)
    assert math.isnan(scorecard.roc_auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_preprocessing_handles_sentinels_missing_and_unknown_categories():
    frame = population.training_applications(2_000, seed=3)
    prep = scorecard.fit_preprocessing(frame)
    assert prep["numeric"]["Loan_to_income"]["lower"] >= 0  # the -9999997 sentinels are treated as missing
    assert scorecard.MISSING in prep["categorical"]["Loan_Payment_Frequency"]
    probe = frame.head(3).copy()
    probe.loc[probe.index[0], "Residential_Status"] = "Q"       # never seen in training
    probe.loc[probe.index[1], "Loan_Payment_Frequency"] = None  # missing is a known category
    masks = scorecard.unknown_categories(probe, prep)
    assert masks["Residential_Status"].tolist() == [True, False, False]
    assert not masks["Loan_Payment_Frequency"].any()
    matrix = scorecard.transform(probe, prep)
    assert matrix.shape == (3, len(prep["feature_names"]))
    assert np.isfinite(matrix).all()


def test_generated_population_is_learnable_and_shaped_like_the_bank_data():
    frame = population.training_applications(6_000, seed=11)
    assert list(frame.columns) == training_data.TRAINING_COLUMNS
    assert 0.08 < (frame[scorecard.LABEL] == "Decline").mean() < 0.13
    assert (frame["Loan_to_income"] == population.LOAN_TO_INCOME_MISSING).any()
    dev = frame[frame.split == "Development"]
    val = frame[frame.split == "Validation"]
    prep = scorecard.fit_preprocessing(dev)
    model = scorecard.train_logistic(scorecard.transform(dev, prep), (dev[scorecard.LABEL] == "Decline").to_numpy())
    auc = scorecard.roc_auc((val[scorecard.LABEL] == "Decline").to_numpy(),
                            scorecard.log_odds(model, scorecard.transform(val, prep)))
    assert auc > 0.85


def test_customers_generator():
    customers = population.customers(1_000, seed=1, first_id=10)
    assert customers["customer_id"].tolist() == list(range(10, 1_010))
    assert (customers["current_limit"] % 500 == 0).all()
    eligible = (customers.current_score >= 600) & (customers.current_limit < 10_000)
    assert 0.3 < eligible.mean() < 0.65


def test_real_bank_file_reads_when_present(datasets_dir):
    path = datasets_dir / "credit" / "BankCaseStudyData.csv"
    if not path.exists():
        pytest.skip(f"reference data set not present at {path}")
    frame = training_data.read_bank_applications(path)
    assert len(frame) == 24_859
    assert (frame[scorecard.LABEL] == "Decline").sum() == 2_597
    assert frame[scorecard.SPLIT].value_counts().to_dict() == {"Development": 19_887, "Validation": 4_972}


def test_bad_training_files_name_file_column_and_line(tmp_path):
    good = population.training_applications(50, seed=2)
    missing = tmp_path / "missing.csv"
    good.drop(columns=["Bureau_Score"]).to_csv(missing, index=False)
    with pytest.raises(training_data.TrainingDataError, match=r"missing\.csv: missing column\(s\) Bureau_Score"):
        training_data.read_bank_applications(missing)
    mistyped = tmp_path / "mistyped.csv"
    bad = good.astype({"Loan_Amount": "object"})
    bad.loc[4, "Loan_Amount"] = "lots"
    bad.to_csv(mistyped, index=False)
    with pytest.raises(training_data.TrainingDataError, match=r"mistyped\.csv, line 6: column Loan_Amount is not numeric"):
        training_data.read_bank_applications(mistyped)
    labels = tmp_path / "labels.csv"
    bad = good.copy()
    bad.loc[0, scorecard.LABEL] = "Maybe"
    bad.to_csv(labels, index=False)
    with pytest.raises(training_data.TrainingDataError, match=r"labels\.csv, line 2: Final_Decision must be"):
        training_data.read_bank_applications(labels)


def test_scores_must_come_back_exactly_once_per_customer():
    from credit_assets import scoring

    sent = pd.DataFrame({"customer_id": [1, 2, 3], "current_score": [610, 620, 630], "current_limit": [1000] * 3})
    back = pd.DataFrame({"customer_id": [3, 1, 2], "probability": [0.1, 0.2, 0.3], "new_score": [600, 610, 620]})
    joined = scoring.attach_scores(sent, back)
    assert joined.set_index("customer_id").loc[3, "new_score"] == 600
    with pytest.raises(scoring.ScoringOutputError, match=r"3 customers sent, 2 scores back, 0 duplicated, 1 missing"):
        scoring.attach_scores(sent, back.iloc[:2])
    with pytest.raises(scoring.ScoringOutputError, match="1 duplicated"):
        scoring.attach_scores(sent, pd.concat([back, back.iloc[:1]]))
    with pytest.raises(scoring.ScoringOutputError, match=r"output s3://b/part-00001\.csv\.out is not customer_id"):
        scoring.read_transform_output([("s3://b/part-00001.csv.out", b"1,0.5,not-a-score\n")])
    parts = list(scoring.transform_input(sent.assign(**{f: 1 for f in scorecard.FEATURES}), part_rows=2))
    assert [name for name, _ in parts] == ["part-00000.csv", "part-00001.csv"]
    assert parts[1][1].decode().startswith("3,1,")
