"""The recommender training job's hyperparameters and their defaults, written once: `train.py` parses them,
`two_tower.Hyperparameters` takes its defaults from them, and the Dagster side offers them as the run config
of `recsys_model` (`recsys_assets.assets.RecsysModelConfig`). Standard library only: imported without torch."""

TRAINING_DEFAULTS = {
    "embedding_dim": 32,
    "hidden": 64,
    "epochs": 200,
    "lr": 0.05,
    "factor_l2": "3,10,100",  # candidates for the factors' L2 penalty, chosen on an inner split
    "inner_fraction": 0.2,  # of the training ratings, to choose factor_l2
    "validation_fraction": 0.2,  # of the ratings, held out on each evaluation split
    "eval_seeds": 5,  # held-out splits scored (seeds seed, seed + 1, ...): mean and standard deviation
    "seed": 7,
}


def factor_l2_candidates(text: str) -> tuple[float, ...]:
    """`factor_l2` as sent to the job ("3,10,100") as numbers."""
    return tuple(float(value) for value in str(text).split(",") if value.strip())
