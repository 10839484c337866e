"""The recommender graph end to end: source -> training data -> two-tower model -> pgvector tables."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest

import recsys_assets as recsys
from recsys_assets.embeddings import ITEM_FILE, USER_FILE, complete_versions, read_embeddings
from recsys_assets.model_code import two_tower
from resources.artifacts import LocalArtifactStore
from resources.model_registry import LocalModelRegistry
from resources.pgvector import PgVectorStore
from resources.sagemaker import LocalSageMakerJobs
from resources.etl_engine import RatingsEtlEngine
from resources.source_db import EmbeddedClassicModels, SqlSourceDatabase

ALL = [recsys.source_ratings, recsys.source_customers, recsys.source_products, recsys.ratings_training_data,
       recsys.ratings_training_data_not_empty, recsys.recsys_catalog, recsys.recsys_model, recsys.embeddings_tables]


def resources_for(app_db, root, source, policy="newest"):
    artifacts = LocalArtifactStore(root=str(root / "artifacts"))
    return {
        "registry": LocalModelRegistry(db=app_db, version_policy=policy, env=root.name.lower().replace("_", "-")[:20]),
        "source_db": source,
        "ratings_etl_engine": RatingsEtlEngine(),
        "artifacts": artifacts,
        "sagemaker": LocalSageMakerJobs(artifacts=artifacts, work_dir=str(root / "sagemaker")),
        "pgvector": PgVectorStore(db=app_db),
    }


def metadata(result, asset):
    [*_, event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


@pytest.fixture(scope="module")
def demo_run(app_db, tmp_path_factory):
    root = tmp_path_factory.mktemp("recsys")
    resources = resources_for(app_db, root, EmbeddedClassicModels(primary=app_db, database="classicmodels_demo_test"))
    result = dg.materialize(ALL, resources=resources)
    yield result, resources
    resources["pgvector"].close()


def test_the_whole_graph_materialises_on_demo_data(demo_run):
    result, resources = demo_run
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {"ratings_training_data_not_empty": True}
    model = metadata(result, "recsys_model")
    version = model["model_version"]
    # the model learns the demo data's structure: better than the popularity and item-mean baselines
    assert model["validation_ndcg_at_5"] > model["popularity_ndcg_at_5"]
    assert model["validation_ndcg_at_5"] > model["item_mean_ndcg_at_5"]
    assert model["validation_rmse"] < model["item_mean_baseline_rmse"]
    artifacts = resources["artifacts"]
    keys = {i.key.split("/", 2)[2] for i in artifacts.list(f"ml-artifacts/{version}/")}
    assert keys == {ITEM_FILE, USER_FILE, "model/best_model.pth", "model/model_config.json", "model/user_tower.json",
                    "scalers/user_features.json", "scalers/item_features.json", "metrics.json", "manifest.json"}
    manifest = artifacts.read_json(f"ml-artifacts/{version}/manifest.json")
    assert manifest["dimension"] == 32 and manifest["rows"] == {"item_embeddings": 110, "user_embeddings": 122}
    assert manifest["training_data"]["fingerprint"] == metadata(result, "ratings_training_data")["fingerprint"]
    assert all(len(entry["sha256"]) == 64 for entry in manifest["files"].values())
    for asset, rows in (("item_embeddings", 110), ("user_embeddings", 122)):
        meta = metadata(result, asset)
        assert (meta["version"], meta["rows"], meta["dimension"]) == (version, rows, 32)
    pgvector = resources["pgvector"]
    assert pgvector.active_version("item_emb") == version
    code = pgvector.connection().execute("SELECT id FROM item_emb ORDER BY id LIMIT 1").fetchone()[0]
    similar = pgvector.similar_items(code, 5)
    assert len(similar) == 5 and code not in [s[0] for s in similar]


def test_quality_is_reported_over_several_held_out_splits_next_to_the_baselines(demo_run):
    result, resources = demo_run
    model = metadata(result, "recsys_model")
    metrics = resources["artifacts"].read_json(f"ml-artifacts/{model['model_version']}/metrics.json")
    evaluation = metrics["evaluation"]
    seeds = recsys.assets.RecsysModelConfig().eval_seeds
    assert seeds >= 5 and evaluation["seeds"] == list(range(7, 7 + seeds)) and metrics["evaluation_seeds"] == seeds
    assert [row["seed"] for row in evaluation["per_seed"]] == evaluation["seeds"]
    figures = ["validation_rmse", "validation_ndcg_at_5", "popularity_ndcg_at_5", "item_mean_ndcg_at_5",
               "item_mean_baseline_rmse", "global_mean_baseline_rmse", "user_mean_baseline_rmse"]
    split_names = dict(zip(figures, two_tower.SPLIT_METRICS))
    for name in figures:  # the mean and the standard deviation of the per-seed figures, for each
        values = [row[split_names[name]] for row in evaluation["per_seed"]]
        assert metrics[name] == pytest.approx(np.mean(values)) and metrics[f"{name}_std"] == pytest.approx(np.std(values, ddof=1))
        assert metrics[f"{name}_std"] > 0
    assert set(evaluation["targets_met"]) == {"ndcg_at_5>popularity", "ndcg_at_5>item_mean", "rmse<item_mean"}
    assert evaluation["targets_met"]["rmse<item_mean"] == (metrics["validation_rmse"] < metrics["item_mean_baseline_rmse"])
    # the asset's metadata shows them: the figures, their standard deviations, the table next to the baselines
    for name in figures[:5]:
        assert model[name] == pytest.approx(metrics[name], rel=1e-2) and f"{name}_std" in model  # rounded
    assert "| model |" in model["quality"] and "| popularity (most rated first) |" in model["quality"]
    assert model["targets_met"] == evaluation["targets_met"]


def test_published_user_tower_reproduces_the_user_embeddings(demo_run, tmp_path):
    result, resources = demo_run
    artifacts = resources["artifacts"]
    version = metadata(result, "recsys_model")["model_version"]
    for name in (two_tower.MODEL_FILE, two_tower.CONFIG_FILE, two_tower.USER_SCALER_FILE):
        artifacts.download_file(f"ml-artifacts/{version}/{name}", tmp_path / name)
    tower = two_tower.UserTower.load(tmp_path)  # torch.load(..., weights_only=True) inside
    catalog = artifacts.read_parquet("recsys/catalog/customers.parquet").sort_values("customernumber")
    published = read_embeddings(artifacts, version, complete_versions(artifacts)[version].manifest, USER_FILE)
    computed = tower.embed(catalog)
    assert np.allclose(computed, published.vectors, atol=1e-5)
    # the numpy export that training wrote (what the Firehose Lambda embeds with) gives the same vectors
    from recsys_assets.model_code.numpy_tower import NumpyUserTower

    files = {name: artifacts.read_bytes(f"ml-artifacts/{version}/{name}")
             for name in (two_tower.USER_TOWER_FILE, two_tower.USER_SCALER_FILE)}
    in_numpy = NumpyUserTower.from_files(files).embed(catalog.to_dict("records"))
    assert np.allclose(in_numpy, published.vectors, atol=1e-5)
    # a new customer from an unseen city and country still gets a unit-length embedding
    stranger = tower.embed(pd.DataFrame({"city": ["Pasadena"], "country": ["Atlantis"], "creditlimit": [59811]}))
    assert stranger.shape == (1, 32) and abs(float(np.linalg.norm(stranger)) - 1) < 1e-5


def test_a_bad_embeddings_file_fails_naming_file_and_line_and_leaves_tables_live(demo_run):
    result, resources = demo_run
    artifacts, pgvector = resources["artifacts"], resources["pgvector"]
    live = pgvector.active_version("item_emb")
    good = artifacts.read_text(f"ml-artifacts/{live}/{ITEM_FILE}").splitlines()
    broken = good[:3] + [good[3].replace("[", "[0.5,", 1)] + good[4:]  # line 4 gets 33 values
    version = "hand-broken-1"
    artifacts.write_text(f"ml-artifacts/{version}/{ITEM_FILE}", "\n".join(broken) + "\n")
    artifacts.write_text(f"ml-artifacts/{version}/{USER_FILE}", artifacts.read_text(f"ml-artifacts/{live}/{USER_FILE}"))
    artifacts.write_json(f"ml-artifacts/{version}/manifest.json",
                         {"dimension": 32, "files": [ITEM_FILE, USER_FILE], "rows": {"item_embeddings": 110}})
    outcome = dg.materialize(ALL, resources=resources, raise_on_error=False,
                             selection=dg.AssetSelection.assets(recsys.embeddings_tables),
                             run_config=dg.RunConfig({"embeddings_tables": recsys.assets.EmbeddingsVersionConfig(version=version)}))
    failure = next(e for e in outcome.all_events if e.is_step_failure).step_failure_data.error
    message = failure.message + (failure.cause.message if failure.cause else "")
    assert f"hand-broken-1/{ITEM_FILE}, line 4: embedding has 33 values, expected dimension 32" in message
    assert pgvector.active_version("item_emb") == live and pgvector.row_count("item_emb") == 110
    assert pgvector.active_version("user_emb") == live  # the good half of the version did not go live alone


def test_real_classicmodels_from_mariadb(classicmodels_mysql, app_db, tmp_path):
    resources = resources_for(app_db, tmp_path, SqlSourceDatabase(source_url=classicmodels_mysql))
    resources["pgvector"] = PgVectorStore(db=app_db, item_table="item_emb_real", user_table="user_emb_real")
    result = dg.materialize(ALL, resources=resources)
    try:
        assert metadata(result, "ratings_training_data")["rows"] == 2532
        model = metadata(result, "recsys_model")
        assert metadata(result, "item_embeddings")["rows"] == 110  # every product of the catalogue
        assert metadata(result, "user_embeddings")["rows"] == 122
        assert 0 < model["validation_rmse"] < 2 and 0 < model["validation_ndcg_at_5"] <= 1
        assert 0 < model["popularity_ndcg_at_5"] <= 1
    finally:
        resources["pgvector"].close()
