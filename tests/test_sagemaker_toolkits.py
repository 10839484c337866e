"""Contract tests: the AWS toolkits that run inside SageMaker's PyTorch containers, installed from PyPI, run the
platform's own artifacts, and agree with the local backend.

- Serving: `sagemaker-pytorch-inference` 2.0 (with the `sagemaker_inference` it carries) and TorchServe's
  request context load a `model.tar.gz` the local backend trained and answer requests exactly as the
  container's model server would hand them over; the answers must equal the local Batch Transform's.
- Training: `sagemaker-training` 5.1 with the PyTorch container's framework module
  (`sagemaker-pytorch-training` 3.0) reads the config files, downloads the uploaded `sourcedir.tar.gz`
  from S3 (moto's server) and runs the entry point; it must see what the local backend gives it.

Each toolkit runs in its own interpreter (they read `SAGEMAKER_BASE_DIR` at import), as in the container.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.harness import training_frame
from credit_assets import scoring, training_data
from credit_assets.assets import MODEL_CODE_DIR as CREDIT_CODE
from credit_assets.assets import CreditModelConfig
from credit_assets.model_code import scorecard
from recsys_assets.assets import MODEL_CODE_DIR as RECSYS_CODE
from recsys_assets.model_code import two_tower as tt
from resources.sagemaker import LocalSageMakerJobs, ModelArchiveError, SageMakerJobError, unpack_archive
from resources.sagemaker.containers import inference_environment

SERVE = textwrap.dedent(
    """
    import json, sys
    from ts.context import Context, RequestProcessor
    from sagemaker_pytorch_serving_container.handler_service import HandlerService

    model_dir, requests = sys.argv[1], json.load(open(sys.argv[2]))
    service = HandlerService()
    context = Context("model", model_dir, {}, 1, None, "0.12.0")
    try:
        service.initialize(context)  # what the model server does when the worker starts
    except Exception as exc:
        print(json.dumps({"initialize_error": f"{type(exc).__name__}: {exc}"}))
        sys.exit(0)
    answers = []
    for request in requests:
        context.request_processor = [RequestProcessor({"Content-Type": request["content_type"],
                                                       "Accept": request["accept"]})]
        [body] = service.handle([{"body": request["body"].encode()}], context)
        answers.append({"status": context.request_processor[0].get_response_status_code(),
                        "body": body.decode() if isinstance(body, bytes) else str(body)})
    print(json.dumps({"answers": answers}))
    """
)


def serve_with_toolkit(model_archive: Path, tmp_path: Path, requests: list[dict]) -> dict:
    """Unpack the archive as SageMaker does into <base>/model and let the toolkit answer `requests`."""
    base = tmp_path / "serving"
    shutil.rmtree(base, ignore_errors=True)
    model_dir = unpack_archive(model_archive, base / "model")
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    (tmp_path / "serve.py").write_text(SERVE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # as in the model's container: its environment, and the code folder on the path (torchserve._set_python_path)
    env.update(inference_environment(), SAGEMAKER_BASE_DIR=str(base), PYTHONPATH=str(model_dir / "code"))
    done = subprocess.run([sys.executable, str(tmp_path / "serve.py"), str(model_dir), str(tmp_path / "requests.json")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the credit scorecard ---------------------------------------------------------------------------------


def train_credit_locally(artifacts, work_dir, job_name: str, data_prefix: str):
    """The credit model trained by the local backend on the generated applications under `data_prefix`."""
    frame, _source = training_data.training_frame(None)
    artifacts.write_bytes(f"{data_prefix}/applications.csv", frame.to_csv(index=False).encode())
    sagemaker = LocalSageMakerJobs(artifacts=artifacts, work_dir=str(work_dir))
    job = sagemaker.train(job_name=job_name, source_dir=CREDIT_CODE, entry_point="train.py",
                          channels={"train": data_prefix}, hyperparameters=CreditModelConfig().model_dump(),
                          output_prefix="training")
    return sagemaker, job, frame


@pytest.fixture(scope="module")
def credit(tmp_path_factory):
    """A credit model trained by the local backend, and the platform's transform input for some customers."""
    from resources.artifacts import LocalArtifactStore

    root = tmp_path_factory.mktemp("credit")
    artifacts = LocalArtifactStore(root=str(root / "artifacts"))
    sagemaker, job, frame = train_credit_locally(artifacts, root / "jobs", "credit-contract", "data/train")
    customers = frame.head(300).rename(columns={f: f for f in scorecard.FEATURES}).copy()
    customers.insert(0, "customer_id", np.arange(1, len(customers) + 1))
    [(_name, request)] = list(scoring.transform_input(customers, 1000))
    return {"sagemaker": sagemaker, "artifacts": artifacts, "model_key": artifacts.key_from_uri(job.model_data_uri),
            "request": request.decode(), "customers": customers, "root": root}


def test_the_inference_toolkit_serves_the_credit_model_as_the_local_backend_does(credit, tmp_path):
    artifacts, sagemaker = credit["artifacts"], credit["sagemaker"]
    archive = artifacts.local_path(credit["model_key"])
    with tarfile.open(archive) as tar:
        assert {"code/inference.py", "code/scorecard.py", "code/requirements.txt", "model.pt"} <= set(tar.getnames())
    served = serve_with_toolkit(archive, tmp_path, [
        {"content_type": "text/csv", "accept": "text/csv", "body": credit["request"]},
        {"content_type": "application/json", "accept": "text/csv", "body": '{"customer_id": 1}'},
    ])
    csv_answer, json_answer = served["answers"]
    assert csv_answer["status"] == 200

    artifacts.write_text("score/in/part-00000.csv", credit["request"])
    job = sagemaker.batch_transform(job_name="credit-contract-score", model_data_key=credit["model_key"],
                                    input_prefix="score/in", output_prefix="score/out")
    assert job.output_keys == ["score/out/part-00000.csv.out"]
    assert artifacts.read_text("score/out/part-00000.csv.out") == csv_answer["body"]  # byte for byte

    # and the numbers are the scorecard's own
    bundle = scorecard.ScorecardBundle(unpack_archive(archive, tmp_path / "bundle"))
    probability, score = bundle.score(credit["customers"])
    answer = pd.read_csv(pd.io.common.StringIO(csv_answer["body"]), header=None, names=["id", "p", "score"])
    assert answer["id"].tolist() == credit["customers"]["customer_id"].tolist()
    assert np.allclose(answer["p"], probability, rtol=1e-6) and (answer["score"].to_numpy() == score).all()

    # a content type the model does not read: 415 from the toolkit, and the local backend says the same
    assert json_answer["status"] == 415
    assert "content type 'application/json' is not supported: the scorecard reads text/csv" in json_answer["body"]
    artifacts.write_text("score-json/in/part-00000.csv", '{"customer_id": 1}\n')
    with pytest.raises(SageMakerJobError, match=r"the model answered 415: GenericInferenceToolkitError: content "
                                                r"type 'application/json' is not supported"):
        sagemaker.batch_transform(job_name="credit-contract-json", model_data_key=credit["model_key"],
                                  input_prefix="score-json/in", output_prefix="score-json/out",
                                  content_type="application/json")


def test_without_its_code_the_toolkit_cannot_load_the_model_and_neither_does_the_local_backend(credit, tmp_path):
    artifacts, sagemaker = credit["artifacts"], credit["sagemaker"]
    unpacked = unpack_archive(artifacts.local_path(credit["model_key"]), tmp_path / "unpacked")
    shutil.rmtree(unpacked / "code")  # the layout the platform published before: weights and JSON only
    bare = tmp_path / "bare.tar.gz"
    with tarfile.open(bare, "w:gz") as tar:
        for path in sorted(unpacked.iterdir()):
            tar.add(path, arcname=path.name)
    served = serve_with_toolkit(bare, tmp_path, [])
    # the toolkit falls back to its default model_fn, torch.jit.load, which cannot read a state_dict
    assert "ModelLoadError" in served["initialize_error"]
    assert "Please ensure model is saved using torchscript" in served["initialize_error"]
    artifacts.upload_file("bare/model.tar.gz", bare)
    artifacts.write_text("bare-in/in/part-00000.csv", credit["request"])
    with pytest.raises(ModelArchiveError, match="has no code/inference.py"):
        sagemaker.batch_transform(job_name="credit-contract-bare", model_data_key="bare/model.tar.gz",
                                  input_prefix="bare-in/in", output_prefix="bare-in/out")


# --- the recommender's user tower --------------------------------------------------------------------------


def test_the_inference_toolkit_serves_the_recommenders_user_tower(datasets_dir, local_artifacts, tmp_path):
    frame = training_frame(datasets_dir)
    train_dir = tmp_path / "ratings"
    frame.to_parquet(train_dir, partition_cols=[tt.USER_ID])
    local_artifacts.upload_dir(train_dir, "ratings")
    sagemaker = LocalSageMakerJobs(artifacts=local_artifacts, work_dir=str(tmp_path / "jobs"))
    job = sagemaker.train(job_name="recsys-contract", source_dir=RECSYS_CODE, entry_point="train.py",
                          channels={"train": "ratings"}, hyperparameters={"epochs": 20}, output_prefix="training")
    model_key = local_artifacts.key_from_uri(job.model_data_uri)
    archive = local_artifacts.local_path(model_key)
    users = [{"customernumber": 103, "city": "Nantes", "country": "France", "creditlimit": 21000.0},
             {"customernumber": 9999, "city": "Atlantis", "country": "Nowhere", "creditlimit": 5000}]  # unseen
    served = serve_with_toolkit(archive, tmp_path, [
        {"content_type": "application/json", "accept": "application/json", "body": json.dumps(users)},
        {"content_type": "application/json", "accept": "application/json", "body": '{"city": "Nantes"'},
        {"content_type": "text/csv", "accept": "application/json", "body": "Nantes,France,21000"},
    ])
    embedded, malformed, csv = served["answers"]
    assert embedded["status"] == 200
    vectors = np.array(json.loads(embedded["body"])["embeddings"])
    tower = tt.UserTower.load(unpack_archive(archive, tmp_path / "tower"))
    assert vectors.shape == (2, 32) and np.allclose(vectors, tower.embed(pd.DataFrame(users)), atol=1e-6)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert malformed["status"] == 500 and "the request is not valid JSON" in malformed["body"]
    assert csv["status"] == 415

    # Batch Transform over JSON lines gives the same vectors
    local_artifacts.write_text("users/in/part-00000.jsonl", "".join(json.dumps(u) + "\n" for u in users))
    sagemaker.batch_transform(job_name="recsys-contract-users", model_data_key=model_key, input_prefix="users/in",
                              output_prefix="users/out", content_type="application/jsonlines",
                              accept="application/jsonlines")
    lines = [json.loads(line) for line in local_artifacts.read_text("users/out/part-00000.jsonl.out").splitlines()]
    assert [line["customernumber"] for line in lines] == [103, 9999]
    assert np.array([line["embedding"] for line in lines]).tolist() == vectors.tolist()


# --- training ------------------------------------------------------------------------------------------------

PROBE = textwrap.dedent(
    """
    import json, os, pathlib, sys
    seen = {k: v for k, v in os.environ.items() if k.startswith("SM_")}
    pathlib.Path(os.environ["SM_MODEL_DIR"], "probe.json").write_text(
        json.dumps({"env": seen, "argv": sys.argv, "cwd": os.getcwd(),
                    "channel": sorted(os.listdir(os.environ["SM_CHANNEL_TRAIN"]))}))
    """
)


def train_with_toolkit(local_base: Path, base: Path, job_name: str, moto: str) -> subprocess.CompletedProcess:
    """Run the training toolkit on a copy of a local job's config files and channels (the sourcedir.tar.gz it
    names lives in moto's S3); `base` plays /opt/ml."""
    shutil.copytree(local_base / "input" / "config", base / "input" / "config")
    for folder in ("model", "output/data"):  # SageMaker creates these before the container starts
        (base / folder).mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("SM_")}
    env.update(SAGEMAKER_BASE_DIR=str(base), TRAINING_JOB_NAME=job_name, AWS_ENDPOINT_URL=moto,
               SAGEMAKER_TRAINING_MODULE="sagemaker_pytorch_container.training:main",
               SM_STUDIO_LOCAL_MODE="true")  # skips the framework's DNS wait for the hosts algo-1 ...
    return subprocess.run([sys.executable, "-c", "from sagemaker_training.cli.train import main; main()"],
                          env=env, cwd=base, capture_output=True, text=True, timeout=600)


def test_the_training_toolkit_gives_the_entry_point_what_the_local_backend_gives(s3_artifacts, moto, tmp_path):
    source = tmp_path / "probe"
    source.mkdir()
    (source / "train.py").write_text(PROBE)
    s3_artifacts.write_text("data/train/part-0.csv", "a,1\n")
    s3_artifacts.write_text("data/train/part-1.csv", "b,2\n")
    sagemaker = LocalSageMakerJobs(artifacts=s3_artifacts, work_dir=str(tmp_path / "jobs"))
    hyperparameters = {"epochs": 3, "lr": 0.5, "name": "abc", "flag": True, "layers": [64, 32], "x": 1}
    job = sagemaker.train(job_name="probe", source_dir=source, entry_point="train.py", channels={"train": "data/train"},
                          hyperparameters=hyperparameters, output_prefix="training")
    local_base = tmp_path / "jobs" / "training" / "probe"
    local = json.loads((Path(job.model_dir) / "probe.json").read_text())

    base = tmp_path / "opt-ml"
    s3_artifacts.download_prefix("data/train", base / "input" / "data" / "train")
    done = train_with_toolkit(local_base, base, "probe", moto)
    assert done.returncode == 0 and not (base / "output" / "failure").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    toolkit = json.loads((base / "model" / "probe.json").read_text())
    toolkit["env"].pop("SM_STUDIO_LOCAL_MODE")  # the test's own setting, passed through

    def same_paths(value: str) -> str:
        return value.replace(str(base), str(local_base))

    assert sorted(local["env"]) == sorted(toolkit["env"])
    for name, value in toolkit["env"].items():
        if name == "SM_TRAINING_ENV":
            assert json.loads(local["env"][name]) == json.loads(same_paths(value)), name
        else:
            assert local["env"][name] == same_paths(value), name
    assert local["argv"] == toolkit["argv"] and local["channel"] == toolkit["channel"]
    assert local["cwd"] == same_paths(toolkit["cwd"])


def test_the_training_toolkit_runs_the_credit_training_script_from_the_uploaded_source(s3_artifacts, moto, tmp_path):
    _sagemaker, job, _frame = train_credit_locally(s3_artifacts, tmp_path / "jobs", "credit-toolkit", "data/credit")
    base = tmp_path / "opt-ml"
    s3_artifacts.download_prefix("data/credit", base / "input" / "data" / "train")
    done = train_with_toolkit(tmp_path / "jobs" / "training" / "credit-toolkit", base, "credit-toolkit", moto)
    assert done.returncode == 0 and not (base / "output" / "failure").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    assert "metric validation:gini=" in done.stdout + done.stderr
    local_model, toolkit_model = Path(job.model_dir), base / "model"

    def files(folder: Path) -> list[str]:
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    assert files(local_model) == files(toolkit_model)
    assert "code/inference.py" in files(toolkit_model)
    local_metrics = json.loads((local_model / scorecard.METRICS_FILE).read_text())
    toolkit_metrics = json.loads((toolkit_model / scorecard.METRICS_FILE).read_text())
    assert toolkit_metrics["validation_gini"] == pytest.approx(local_metrics["validation_gini"], abs=1e-9)
