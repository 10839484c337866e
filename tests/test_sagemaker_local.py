"""The local SageMaker backend: script-mode training and batch transform in subprocesses, same contract as AWS."""

import json
import tarfile
from pathlib import Path

import pytest

from resources.sagemaker import MetricDefinition, SageMakerJobError, SageMakerResource

@pytest.fixture
def sagemaker(local_artifacts, tmp_path):
    local_artifacts.write_text("data/train/part-0.csv", "a,1\nb,2\nc,3\n")
    return SageMakerResource(artifacts=local_artifacts, backend="local", work_dir=str(tmp_path / "jobs"))


def train(sagemaker, code_dir, name="job-1", **hps):
    return sagemaker.train(
        job_name=name, source_dir=code_dir, entry_point="train.py", channels={"train": "data/train"},
        hyperparameters={"epochs": 3, "lr": 0.5, **hps}, output_prefix="training",
        tags={"MODEL_DB_SYNC": "true"}, metric_definitions=[MetricDefinition("validation:rmse", r"validation:rmse=([0-9.]+)")],
    )


def test_training_follows_the_script_mode_contract(sagemaker, code_dir, local_artifacts, tmp_path):
    job = train(sagemaker, code_dir)
    assert job.status == "Completed" and job.metrics == {"validation:rmse": 0.25}
    model = json.loads((tmp_path / "jobs/training/job-1/model/model.json").read_text())
    assert (model["epochs"], model["lr"], model["rows"]) == (3, 0.5, 3)  # hyperparameters as --name value
    env = model["env"]
    assert json.loads(env["SM_HPS"]) == {"epochs": "3", "lr": "0.5"}
    assert env["SM_CHANNEL_TRAIN"].endswith("input/data/train")
    assert env["SM_MODEL_DIR"].endswith("job-1/model") and env["SM_OUTPUT_DATA_DIR"].endswith("output/data")
    assert json.loads(env["SM_CHANNELS"]) == ["train"]
    # model.tar.gz where SageMaker puts it: <output path>/<job>/output/model.tar.gz
    assert job.model_data_uri == local_artifacts.uri("training/job-1/output/model.tar.gz")
    with tarfile.open(local_artifacts.local_path("training/job-1/output/model.tar.gz")) as tar:
        assert tar.getnames() == ["model.json"]
    assert local_artifacts.exists("training/job-1/output/output.tar.gz")
    assert job.input_channels == {"train": local_artifacts.uri("data/train")}
    assert not (tmp_path / "jobs/training/job-1/input/data").exists()  # channel copies are removed


def test_failed_training_reports_the_scripts_reason_and_is_recorded(sagemaker, code_dir):
    with pytest.raises(SageMakerJobError, match=r"training job job-bad ended Failed: .*the data is bad on line 3"):
        train(sagemaker, code_dir, name="job-bad", fail="yes")
    [failed] = sagemaker.list_training_jobs(status="Failed")
    assert failed.name == "job-bad" and "line 3" in failed.failure_reason


def test_jobs_are_listed_newest_first_with_tags_and_names_are_unique(sagemaker, code_dir):
    train(sagemaker, code_dir, name="job-a")
    train(sagemaker, code_dir, name="job-b")
    jobs = sagemaker.list_training_jobs()
    assert [j.name for j in jobs] == ["job-b", "job-a"]
    assert jobs[0].tags == {"MODEL_DB_SYNC": "true"} and jobs[0].hyperparameters == {"epochs": "3", "lr": "0.5"}
    assert sagemaker.describe_training_job("job-a").metrics == {"validation:rmse": 0.25}
    with pytest.raises(SageMakerJobError, match="already exists"):
        train(sagemaker, code_dir, name="job-a")


def test_invalid_names_and_missing_channels(sagemaker, code_dir):
    with pytest.raises(ValueError, match="invalid SageMaker job name"):
        train(sagemaker, code_dir, name="bad_name")
    with pytest.raises(FileNotFoundError, match="training channel 'train': no files under"):
        sagemaker.train(job_name="job-x", source_dir=code_dir, entry_point="train.py", channels={"train": "nothing"},
                        hyperparameters={}, output_prefix="training")


def test_batch_transform_splits_lines_into_payloads_and_assembles_outputs(sagemaker, code_dir, local_artifacts):
    job = train(sagemaker, code_dir)
    model_key = local_artifacts.key_from_uri(job.model_data_uri)
    rows = "".join(f"c{i},{i}\n" for i in range(3000))
    local_artifacts.write_text("batch/in/part-0.csv", rows)
    local_artifacts.write_text("batch/in/sub/part-1.csv", "z,10\n")
    result = sagemaker.batch_transform(
        job_name="score-1", source_dir=code_dir, entry_point="inference.py", model_data_key=model_key,
        input_prefix="batch/in", output_prefix="batch/out", max_payload_mb=0.01,  # ~10 KB: several payloads
    )
    assert result.output_keys == ["batch/out/part-0.csv.out", "batch/out/sub/part-1.csv.out"]
    out = local_artifacts.read_text("batch/out/part-0.csv.out").splitlines()
    assert len(out) == 3000 and out[0] == "c0,0.0" and out[-1] == "c2999,1499.5"
    assert local_artifacts.read_text("batch/out/sub/part-1.csv.out") == "z,5.0\n"
    left = sorted(p.name for p in (Path(sagemaker.work_dir) / "transform" / "score-1").iterdir())
    assert left == ["code", "transform.log"]  # no copy of the inputs (customer data) or outputs stays behind


def test_batch_transform_failure_names_the_file_and_records(sagemaker, code_dir, local_artifacts):
    job = train(sagemaker, code_dir)
    local_artifacts.write_text("bad/in/part-7.csv", "a,1\nb,boom\n")
    with pytest.raises(SageMakerJobError, match=r"part-7\.csv, records 1-2: ValueError: cannot score 'boom'"):
        sagemaker.batch_transform(
            job_name="score-bad", source_dir=code_dir, entry_point="inference.py",
            model_data_key=local_artifacts.key_from_uri(job.model_data_uri),
            input_prefix="bad/in", output_prefix="bad/out",
        )
    assert local_artifacts.list("bad/out/") == []


def test_a_record_larger_than_the_payload_limit_names_its_file(sagemaker, code_dir, local_artifacts):
    job = train(sagemaker, code_dir)
    local_artifacts.write_text("big/in/part-3.csv", "a," + "9" * 20_000 + "\n")
    with pytest.raises(SageMakerJobError, match=r"part-3\.csv: record 1 is larger than MaxPayloadInMB"):
        sagemaker.batch_transform(job_name="score-big", source_dir=code_dir, entry_point="inference.py",
                                  model_data_key=local_artifacts.key_from_uri(job.model_data_uri),
                                  input_prefix="big/in", output_prefix="big/out", max_payload_mb=0.01)
