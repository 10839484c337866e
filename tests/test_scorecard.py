"""Scorecard maths, preprocessing and the training-data readers (plain Python, no Dagster)."""

import csv
import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

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


def test_binning_is_monotone_with_special_values_missing_and_unknown_categories():
    frame = population.training_applications(6_000, seed=3)
    dev = frame[frame.split == "Development"]
    prep = scorecard.fit_preprocessing(dev)
    assert prep["format"] == 2 and prep["binning"]["fitted_on"]["applications"] == len(dev)  # Development only
    specs = {c["name"]: c for c in prep["characteristics"]}
    assert list(specs) == scorecard.FEATURES
    for name in scorecard.NUMERIC_FEATURES:
        spec = specs[name]
        values = [a for a in spec["attributes"] if a["kind"] == "range"]
        assert len(values) == len(spec["edges"]) + 1 and spec["edges"] == sorted(spec["edges"])
        assert all(a["applications"] >= prep["binning"]["min_bin_share"] * len(dev) for a in values), name
        rates = [a["decline_rate"] for a in values]
        if spec["direction"] == "increasing":
            assert rates == sorted(rates), name
        elif spec["direction"] == "decreasing":
            assert rates == sorted(rates, reverse=True), name
        assert spec["attributes"][-1]["kind"] == "missing"
        assert sum(a["applications"] for a in spec["attributes"]) == len(dev)
    # the data set's "no income" code (-9999997) is Loan_to_income's missing attribute, not a number
    missing = specs["Loan_to_income"]["attributes"][-1]
    assert missing["applications"] == int((dev["Loan_to_income"] < 0).sum()) > 0
    assert scorecard.MISSING in prep["categorical"]["Loan_Payment_Frequency"]

    probe = dev.head(6).astype({"Bureau_Score": "float64", "Loan_Amount": "float64"}).reset_index(drop=True)
    probe.loc[0, "Residential_Status"] = "Q"       # never seen in training
    probe.loc[1, "Loan_Payment_Frequency"] = None  # missing is a known category
    probe.loc[2, "Bureau_Score"] = 1e9             # far above the training range
    probe.loc[3, "Bureau_Score"] = -5              # a negative code: missing
    probe.loc[4, "Bureau_Score"] = float("nan")
    probe.loc[5, "Loan_Amount"] = float("inf")
    masks = scorecard.unknown_categories(probe, prep)
    assert masks["Residential_Status"].tolist() == [True] + [False] * 5
    assert not masks["Loan_Payment_Frequency"].any()
    codes = scorecard.attribute_codes(probe, prep)
    start = dict(zip(scorecard.FEATURES, scorecard.offsets(prep)))

    def attribute(row: int, name: str) -> dict:
        return specs[name]["attributes"][codes[row, scorecard.FEATURES.index(name)] - start[name]]

    assert codes.shape == (6, len(scorecard.FEATURES)) and codes.dtype == np.int64
    assert attribute(0, "Residential_Status")["kind"] == "other"
    assert attribute(1, "Loan_Payment_Frequency")["label"] == "(missing)"
    assert attribute(2, "Bureau_Score")["label"].startswith(">")  # the last, open-ended bin
    assert attribute(3, "Bureau_Score")["kind"] == attribute(4, "Bureau_Score")["kind"] == "missing"
    assert attribute(5, "Loan_Amount")["label"].startswith(">")


def test_points_add_up_to_the_score_follow_the_risk_order_and_are_readable(tmp_path):
    frame = population.training_applications(6_000, seed=5)
    dev, val = scorecard.split_frame(frame, 7)
    prep, model = scorecard.fit(dev)
    scale = scorecard.scaling()
    scorecard.save_bundle(tmp_path, model, prep, scale, {"validation_gini": 0.5, "validation_auc": 0.75})
    bundle = scorecard.ScorecardBundle(tmp_path)  # weights_only=True
    _probability, scores = bundle.score(val)

    table = list(csv.DictReader(io.StringIO((tmp_path / scorecard.POINTS_CSV_FILE).read_text())))
    assert len(table) == len(prep["feature_names"])
    assert {row["characteristic"] for row in table} == set(scorecard.FEATURES)
    points = np.array([float(row["points"]) for row in table])
    exact = np.array([p["points"] for p in json.loads((tmp_path / scorecard.SCORECARD_FILE).read_text())["points"]])
    assert np.allclose(points, exact, atol=0.005)
    # an application's score is the sum of its attributes' points (the CSV's, to two decimals)
    summed = exact[scorecard.attribute_codes(val, prep)].sum(axis=1)
    assert np.allclose(summed, scale["offset"] - scale["factor"] * bundle.log_odds(val), atol=1e-3)
    assert (np.abs(points[scorecard.attribute_codes(val, prep)].sum(axis=1) - scores) <= 1).all()
    # points never rise with risk along a characteristic's risk order; unseen attributes get the lowest points
    for spec, start in zip(prep["characteristics"], scorecard.offsets(prep)):
        along = exact[start + np.array(spec["risk_order"], dtype=int)]
        assert (np.diff(along) <= 1e-6).all(), spec["name"]
        block = exact[start:start + len(spec["attributes"])]
        for attribute, value in zip(spec["attributes"], block):
            if attribute["applications"] == 0:
                assert value == pytest.approx(block.min()), (spec["name"], attribute["label"])
    markdown = (tmp_path / scorecard.POINTS_MARKDOWN_FILE).read_text()
    assert "## Application_Score" in markdown and "| attribute | applications |" in markdown
    assert "PDO 20, 600 points at good:bad odds of 30" in markdown
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.pickle"))


def test_the_weights_follow_the_risk_order_even_against_the_data():
    """The monotone constraint binds: told that a higher Application_Score is riskier (the data say the
    opposite), the fit keeps that characteristic's value bins' weights non-decreasing along that order."""
    dev = population.training_applications(6_000, seed=6)
    prep = scorecard.fit_preprocessing(dev)
    spec = prep["characteristics"][scorecard.FEATURES.index("Application_Score")]
    assert spec["direction"] == "decreasing"
    spec["risk_order"] = spec["risk_order"][::-1]
    codes = scorecard.attribute_codes(dev, prep)
    start = scorecard.offsets(prep)[scorecard.FEATURES.index("Application_Score")]
    chain = start + np.array(spec["risk_order"])
    for monotone in (True, False):
        model = scorecard.train_scorecard(codes, scorecard.labels(dev), prep, monotone=monotone)
        steps = np.diff(model.linear.weight.detach().double().numpy()[0][chain])
        if monotone:
            assert (steps >= -1e-6).all()
        else:  # the data's own direction shows without the constraint
            assert steps.min() < -0.5


def test_a_bundle_of_the_previous_format_still_scores(tmp_path):
    """Format 1 (standardised numbers, missing indicators, one-hot categories) loads and scores as before."""
    frame = population.training_applications(300, seed=4)
    numeric = {name: {"lower": 0.0, "upper": 2000.0, "median": 10.0, "mean": 20.0, "std": 4.0}
               for name in scorecard.NUMERIC_FEATURES}
    categorical = {name: sorted(set(scorecard.feature_frame(frame)[name]) | {scorecard.MISSING})
                   for name in scorecard.CATEGORICAL_FEATURES}
    names = (scorecard.NUMERIC_FEATURES + [f"{n}__missing" for n in scorecard.NUMERIC_FEATURES]
             + [f"{n}={v}" for n in scorecard.CATEGORICAL_FEATURES for v in categorical[n]])
    prep = {"format": 1, "numeric": numeric, "categorical": categorical, "feature_names": names}
    model = scorecard.LogisticScorecard(len(names))  # built on first use (torch is not loaded before)
    assert type(model) is scorecard.LogisticScorecard and type(model).__qualname__ == "LogisticScorecard"
    torch.nn.init.normal_(model.linear.weight, std=0.01)
    torch.save(model.state_dict(), tmp_path / scorecard.MODEL_FILE)
    (tmp_path / scorecard.PREPROCESSING_FILE).write_text(json.dumps(prep))
    (tmp_path / scorecard.SCORECARD_FILE).write_text(json.dumps({"n_features": len(names),
                                                                 "scaling": scorecard.scaling()}))
    probability, scores = scorecard.ScorecardBundle(tmp_path).score(frame)
    features = scorecard.feature_frame(frame)
    x = [((features[n].fillna(10.0).clip(0, 2000) - 20.0) / 4.0).to_numpy() for n in scorecard.NUMERIC_FEATURES]
    x += [features[n].isna().to_numpy(dtype=float) for n in scorecard.NUMERIC_FEATURES]
    x += [(features[n] == v).to_numpy(dtype=float) for n in scorecard.CATEGORICAL_FEATURES for v in categorical[n]]
    expected = np.column_stack(x) @ model.linear.weight.detach().double().numpy()[0] + float(model.linear.bias.detach())
    assert np.allclose(np.log(probability / (1 - probability)), expected, atol=1e-4)
    assert (scores == scorecard.scores_from_log_odds(expected, scorecard.scaling())).mean() > 0.99


def test_generated_population_is_learnable_and_shaped_like_the_bank_data():
    frame = population.training_applications(6_000, seed=11)
    assert list(frame.columns) == training_data.TRAINING_COLUMNS
    assert 0.08 < (frame[scorecard.LABEL] == "Decline").mean() < 0.13
    assert (frame["Loan_to_income"] == population.LOAN_TO_INCOME_MISSING).any()
    dev = frame[frame.split == "Development"]
    val = frame[frame.split == "Validation"]
    prep, model = scorecard.fit(dev)
    auc = scorecard.roc_auc(scorecard.labels(val), scorecard.attribute_log_odds(model, scorecard.attribute_codes(val, prep)))
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
