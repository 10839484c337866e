"""The limit-increase rule, exactly as the reference states it, and the independent policy check."""

import pandas as pd
import pytest

from credit_assets.policy import APPROVED, DECLINED, LimitPolicy, decide_limits, policy_violations


def decide(score, limit, policy=LimitPolicy()):
    frame = pd.DataFrame({"customer_id": [1], "new_score": [score], "current_limit": [limit]})
    return decide_limits(frame, policy).iloc[0]


@pytest.mark.parametrize(
    "score, limit, decision, new_limit, reason",
    [
        (650, 4_000, APPROVED, 6_000, "Score 650 >= 650, increase by 50%"),
        (700, 4_999, APPROVED, 7_498, "Score 700 >= 650, increase by 50%"),  # int() truncates 7498.5
        (700, 5_000, APPROVED, 6_250, "Score 700 >= 650, increase by 25%"),
        (720, 9_999, APPROVED, 12_498, "Score 720 >= 650, increase by 25%"),  # 12498.75 -> 12498
        (800, 17_000, APPROVED, 20_000, "Score 800 >= 650, increase by 25%"),  # capped at 20,000
        (649, 4_000, DECLINED, 4_000, "Score 649 < 650, no increase"),
        (300, 9_000, DECLINED, 9_000, "Score 300 < 650, no increase"),
    ],
)
def test_reference_rule(score, limit, decision, new_limit, reason):
    row = decide(score, limit)
    assert (row.decision, row.new_limit, row.reason) == (decision, new_limit, reason)


def test_thresholds_are_configurable():
    policy = LimitPolicy(approve_min_score=700, low_limit_threshold=3_000, low_limit_increase_pct=40,
                         high_limit_increase_pct=10, max_limit=8_000)
    assert decide(699, 2_000, policy).decision == DECLINED
    row = decide(700, 2_000, policy)
    assert (row.new_limit, row.reason) == (2_800, "Score 700 >= 700, increase by 40%")
    assert decide(750, 7_500, policy).new_limit == 8_000


def test_policy_violations_find_every_kind_of_tampering():
    policy = LimitPolicy()
    scores = pd.DataFrame({
        "customer_id": [1, 2, 3, 4, 5],
        "new_score": [700, 700, 600, 800, 700],
        "current_limit": [4_000, 6_000, 5_000, 19_000, 1_000],
    })
    decisions = decide_limits(scores, policy)
    assert policy_violations(decisions, policy).empty
    tampered = decisions.copy()
    tampered.loc[0, "new_limit"] = 6_001            # wrong percentage
    tampered.loc[2, "new_limit"] = 5_500            # declined but changed
    tampered.loc[3, "new_limit"] = 23_750           # cap ignored
    tampered.loc[4, "decision"] = DECLINED          # wrong decision
    found = policy_violations(tampered, policy)
    assert sorted(found["customer_id"]) == [1, 3, 4, 5]
    assert "should be 6000" in found.set_index("customer_id").loc[1, "problem"]


def test_negative_percentages_are_rejected():
    with pytest.raises(ValueError, match="must not be negative"):
        LimitPolicy(low_limit_increase_pct=-5)


def test_the_processing_steps_environment_carries_every_threshold_and_names_a_bad_one():
    """The SageMaker processing step gets the policy as POLICY_<FIELD> variables (`to_env`) and reads it back
    (`from_env`): every field survives, unset ones keep their defaults, a bad value names its variable."""
    policy = LimitPolicy(approve_min_score=700, low_limit_threshold=4_000, low_limit_increase_pct=40,
                         high_limit_increase_pct=20, max_limit=15_000)
    assert LimitPolicy.from_env(policy.to_env()) == policy
    assert set(policy.to_env()) == {f"POLICY_{name.upper()}" for name in LimitPolicy().as_dict()}
    assert LimitPolicy.from_env({"POLICY_MAX_LIMIT": "9000"}) == LimitPolicy(max_limit=9_000)
    with pytest.raises(ValueError, match=r"POLICY_APPROVE_MIN_SCORE must be a whole number, not '6x0'"):
        LimitPolicy.from_env({"POLICY_APPROVE_MIN_SCORE": "6x0"})
