"""The local SageMaker backend: training and Batch Transform in subprocesses, under the containers' contracts
(the contract tests in test_sagemaker_toolkits.py hold the same artifacts against the AWS toolkits)."""

import json
import os
import tarfile
from pathlib import Path

import pytest

from resources.sagemaker import (
    LocalSageMakerJobs,
    MetricDefinition,
    ModelArchiveError,
    SageMakerJobError,
    TransformSettingsError,
    pack_directory,
)


@pytest.fixture
def sagemaker(local_artifacts, tmp_path):
    local_artifacts.write_text("data/train/part-0.csv", "a,1\nb,2\nc,3\n")
    return LocalSageMakerJobs(artifacts=local_artifacts, work_dir=str(tmp_path / "jobs"))


def train(sagemaker, code_dir, name="job-1", **hps):
    return sagemaker.train(
        job_name=name, source_dir=code_dir, entry_point="train.py", channels={"train": "data/train"},
        hyperparameters={"lr": 0.5, "epochs": 3, **hps}, output_prefix="training",
        tags={"MODEL_DB_SYNC": "true"}, metric_definitions=[MetricDefinition("validation:rmse", r"validation:rmse=([0-9.]+)")],
    )


def test_training_follows_the_training_toolkits_contract(sagemaker, code_dir, local_artifacts, tmp_path):
    job = train(sagemaker, code_dir)
    assert job.status == "Completed" and job.metrics == {"validation:rmse": 0.25}
    base = tmp_path / "jobs/training/job-1"
    model = json.loads((base / "model/model.json").read_text())
    assert (model["epochs"], model["lr"], model["rows"]) == (3, 0.5, 3)
    assert model["argv"] == ["train.py", "--epochs", "3", "--lr", "0.5"]  # sorted by name, as the toolkit passes them
    assert model["cwd"] == str(base / "code")
    env = model["env"]
    assert json.loads(env["SM_HPS"]) == {"epochs": 3, "lr": 0.5}  # JSON-decoded, not text
    assert env["SM_HP_LR"] == "0.5" and env["SM_USER_ARGS"] == '["--epochs","3","--lr","0.5"]'
    assert env["SM_CHANNEL_TRAIN"] == str(base / "input/data/train")
    assert env["SM_MODEL_DIR"] == str(base / "model") and env["SM_OUTPUT_DATA_DIR"] == str(base / "output/data")
    assert json.loads(env["SM_CHANNELS"]) == ["train"] and env["SM_MODULE_NAME"] == "train"
    # the source folder went where SageMaker reads it from, and the job ran the uploaded copy
    assert env["SM_MODULE_DIR"] == local_artifacts.uri("sagemaker/code/job-1/sourcedir.tar.gz")
    assert local_artifacts.exists("sagemaker/code/job-1/sourcedir.tar.gz")
    # the config files as SageMaker mounts them: hyperparameters JSON-encoded as the SDK sends them
    config = json.loads((base / "input/config/hyperparameters.json").read_text())
    assert config["lr"] == "0.5" and config["sagemaker_program"] == '"train.py"'
    assert json.loads((base / "input/config/resourceconfig.json").read_text())["hosts"] == ["algo-1"]
    # model.tar.gz where SageMaker puts it: <output path>/<job>/output/model.tar.gz
    assert job.model_data_uri == local_artifacts.uri("training/job-1/output/model.tar.gz")
    with tarfile.open(local_artifacts.local_path("training/job-1/output/model.tar.gz")) as tar:
        assert tar.getnames() == ["code", "code/inference.py", "model.json"]
    assert local_artifacts.exists("training/job-1/output/output.tar.gz")
    assert job.input_channels == {"train": local_artifacts.uri("data/train")}
    assert job.hyperparameters == {"lr": "0.5", "epochs": "3"}
    assert not (base / "input/data").exists()  # channel copies are removed


def test_model_code_cannot_import_the_platform(sagemaker, code_dir):
    (code_dir / "train.py").write_text("import resources.settings\n")
    with pytest.raises(SageMakerJobError, match=r"No module named 'resources': model code runs in the "
                                                r"SageMaker container"):
        train(sagemaker, code_dir, name="job-imports")


def test_model_code_sees_no_credentials_and_an_interrupted_job_is_stopped(sagemaker, code_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:sekret@db/bank")
    (code_dir / "train.py").write_text(
        "import json, os, pathlib\n"
        "pathlib.Path(os.environ['SM_MODEL_DIR'], 'env.json').write_text(json.dumps(sorted(os.environ)))\n")
    job = train(sagemaker, code_dir, name="job-env")
    seen = json.loads((Path(job.model_dir) / "env.json").read_text())
    assert "AWS_SECRET_ACCESS_KEY" not in seen and "DATABASE_URL" not in seen and "SM_MODEL_DIR" in seen

    pid_file = tmp_path / "pid"
    (code_dir / "train.py").write_text(
        f"import os, pathlib, time\npathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        "print('started', flush=True)\ntime.sleep(120)\n")

    def interrupted(line):  # as when Dagster stops the run while the job logs
        if line == "started":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sagemaker.train(job_name="job-stopped", source_dir=code_dir, entry_point="train.py",
                        channels={"train": "data/train"}, hyperparameters={}, output_prefix="training", log=interrupted)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)  # the job's process is gone


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
    assert jobs[0].tags == {"MODEL_DB_SYNC": "true"} and jobs[0].hyperparameters == {"lr": "0.5", "epochs": "3"}
    assert sagemaker.describe_training_job("job-a").metrics == {"validation:rmse": 0.25}
    with pytest.raises(SageMakerJobError, match="already exists"):
        train(sagemaker, code_dir, name="job-a")
    with pytest.raises(SageMakerJobError, match="no local training job named job-z"):
        sagemaker.describe_training_job("job-z")


def test_invalid_names_hyperparameters_and_missing_channels(sagemaker, code_dir):
    with pytest.raises(ValueError, match="invalid SageMaker job name"):
        train(sagemaker, code_dir, name="bad_name")
    with pytest.raises(ValueError, match="hyperparameter 'lr' is not a JSON value"):
        train(sagemaker, code_dir, name="job-nan", lr=float("nan"))
    with pytest.raises(FileNotFoundError, match="training channel 'train': no files under"):
        sagemaker.train(job_name="job-x", source_dir=code_dir, entry_point="train.py", channels={"train": "nothing"},
                        hyperparameters={}, output_prefix="training")
    with pytest.raises(SageMakerJobError, match="runs one training instance, not 2"):
        sagemaker.model_copy(update={"training_instance_count": 2}).model_copy()._train(
            job_name="job-2", source_uri="", entry_point="train.py", channels={}, hyperparameters={}, output_prefix="t",
            tags={}, metric_definitions=[], log=print)


def transform(sagemaker, model_key, name, prefix, **settings):
    return sagemaker.batch_transform(job_name=name, model_data_key=model_key, input_prefix=f"{prefix}/in",
                                     output_prefix=f"{prefix}/out", **settings)


@pytest.fixture
def model_key(sagemaker, code_dir, local_artifacts):
    return local_artifacts.key_from_uri(train(sagemaker, code_dir).model_data_uri)


def test_batch_transform_splits_lines_into_payloads_and_assembles_outputs(sagemaker, model_key, local_artifacts):
    rows = "".join(f"c{i},{i}\n" for i in range(150_000))  # about 1.6 MB: two payloads of at most 1 MB
    local_artifacts.write_text("batch/in/part-0.csv", rows)
    local_artifacts.write_text("batch/in/sub/part-1.csv", "z,10\n")
    result = transform(sagemaker, model_key, "score-1", "batch", max_payload_mb=1)
    assert result.output_keys == ["batch/out/part-0.csv.out", "batch/out/sub/part-1.csv.out"]
    out = local_artifacts.read_text("batch/out/part-0.csv.out").splitlines()
    assert len(out) == 150_000 and out[0] == "c0,0.0" and out[-1] == "c149999,74999.5"
    assert local_artifacts.read_text("batch/out/sub/part-1.csv.out") == "z,5.0\n"
    log = (Path(sagemaker.work_dir) / "transform/score-1/transform.log").read_text()
    assert "transformed 150001 records from 2 file(s)" in log
    left = sorted(p.name for p in (Path(sagemaker.work_dir) / "transform" / "score-1").iterdir())
    assert left == ["transform.log"]  # no copy of the model, inputs (customer data) or outputs stays behind


def test_single_record_requests_and_instances_sharing_the_files(sagemaker, code_dir, local_artifacts, tmp_path):
    counting = (code_dir / "inference.py").read_text().replace(
        'return "".join(f"{i},{v}\\n" for i, v in prediction)',
        'return "".join(f"{i},{v},{len(prediction)},{__import__(\'os\').getpid()}\\n" for i, v in prediction)')
    (code_dir / "inference.py").write_text(counting)
    model_key = local_artifacts.key_from_uri(train(sagemaker, code_dir).model_data_uri)
    for part in range(4):
        local_artifacts.write_text(f"many/in/part-{part}.csv", "".join(f"p{part}r{i},{i}\n" for i in range(5)))
    two = sagemaker.model_copy(update={"transform_instance_count": 2})
    job = transform(two, model_key, "score-many", "many", batch_strategy="SingleRecord")
    assert job.instance_count == 2
    lines = [line.split(",") for key in job.output_keys for line in local_artifacts.read_text(key).splitlines()]
    assert len(lines) == 20 and {n for _i, _v, n, _pid in lines} == {"1"}  # one record per request
    assert len({pid for _i, _v, _n, pid in lines}) == 2  # two serving processes shared the four files
    log = (Path(sagemaker.work_dir) / "transform/score-many/transform.log").read_text()
    assert "[algo-1] transformed 10 records from 2 file(s)" in log and "[algo-2] transformed 10 records" in log
    whole = transform(sagemaker, model_key, "score-whole", "many", split_type="None")
    assert local_artifacts.read_text("many/out/part-0.csv.out").splitlines()[0].split(",")[2] == "5"  # one request
    assert whole.instance_count == 1


def test_batch_transform_failure_names_the_file_and_records(sagemaker, model_key, local_artifacts):
    local_artifacts.write_text("bad/in/part-7.csv", "a,1\nb,boom\n")
    local_artifacts.write_text("bad/out/part-7.csv.out", "an earlier run's output\n")
    with pytest.raises(SageMakerJobError, match=r"part-7\.csv, records 1-2: the model answered 500: ValueError: "
                                                r"cannot score 'boom'"):
        transform(sagemaker, model_key, "score-bad", "bad")
    assert local_artifacts.list("bad/out/") == []  # neither a half-written output nor an earlier one
    with pytest.raises(SageMakerJobError, match=r"the model answered 500: ValueError: cannot read application/json"):
        transform(sagemaker, model_key, "score-json", "bad", content_type="application/json")


def test_a_record_larger_than_the_payload_limit_names_its_file(sagemaker, model_key, local_artifacts):
    local_artifacts.write_text("big/in/part-3.csv", "a," + "9" * (1024 * 1024 + 10) + "\n")
    with pytest.raises(SageMakerJobError, match=r"part-3\.csv: record 1 is 1,048,589 bytes, larger than MaxPayloadInMB"):
        transform(sagemaker, model_key, "score-big", "big", max_payload_mb=1)
    with pytest.raises(SageMakerJobError, match=r"part-3\.csv: the file is 1,048,589 bytes, more than MaxPayloadInMB"):
        transform(sagemaker, model_key, "score-big", "big", max_payload_mb=1, split_type="None")


@pytest.mark.parametrize("settings, message", [
    ({"max_payload_mb": 0.5}, "MaxPayloadInMB must be a whole number of MB from 1 to 100, not 0.5"),
    ({"max_payload_mb": 101}, "MaxPayloadInMB must be a whole number of MB from 1 to 100, not 101"),
    ({"split_type": "RecordIO"}, "SplitType 'RecordIO' is not supported here"),
    ({"batch_strategy": "AllAtOnce"}, "BatchStrategy must be one of MultiRecord, SingleRecord"),
])
def test_transform_settings_aws_would_refuse_are_refused(sagemaker, model_key, local_artifacts, settings, message):
    local_artifacts.write_text("s/in/part-0.csv", "a,1\n")
    with pytest.raises(TransformSettingsError, match=message):
        transform(sagemaker, model_key, "score-settings", "s", **settings)


def archive_of(tmp_path, files: dict[str, str]) -> Path:
    folder = tmp_path / "archive"
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return pack_directory(folder, tmp_path / "model.tar.gz")


def test_links_are_packed_as_files_and_archives_holding_links_are_refused(sagemaker, local_artifacts, tmp_path):
    folder = tmp_path / "with-link"
    (folder / "code").mkdir(parents=True)
    (folder / "code" / "inference.py").write_text("")
    (folder / "weights.bin").write_bytes(b"w")
    (folder / "model.pt").symlink_to("weights.bin")
    with tarfile.open(pack_directory(folder, tmp_path / "packed.tar.gz")) as tar:
        assert tar.getmember("model.pt").isfile()  # stored as the file it points to
    linked = tmp_path / "linked.tar.gz"
    with tarfile.open(linked, "w:gz") as tar:
        tar.add(folder / "code" / "inference.py", arcname="code/inference.py")
        tar.add(folder / "model.pt", arcname="model.pt")  # a symlink member
    local_artifacts.upload_file("models/linked/model.tar.gz", linked)
    with pytest.raises(ModelArchiveError, match="member 'model.pt' is a link or a special file"):
        sagemaker.check_model_archive("models/linked/model.tar.gz")


def test_a_model_without_its_serving_code_is_refused_before_serving(sagemaker, local_artifacts, tmp_path):
    local_artifacts.write_text("m/in/part-0.csv", "a,1\n")
    local_artifacts.upload_file("models/bare/model.tar.gz", archive_of(tmp_path, {"model.json": '{"lr": 1}'}))
    with pytest.raises(ModelArchiveError, match=r"models/bare/model\.tar\.gz has no code/inference\.py: the SageMaker "
                                                r"PyTorch serving container imports the inference code only from code/"):
        transform(sagemaker, "models/bare/model.tar.gz", "score-bare", "m")
    local_artifacts.write_bytes("models/junk/model.tar.gz", b"not a tarball")
    with pytest.raises(ModelArchiveError, match=r"models/junk/model\.tar\.gz is not a readable model\.tar\.gz"):
        transform(sagemaker, "models/junk/model.tar.gz", "score-junk", "m")


@pytest.mark.parametrize("code, message", [
    ("def model_fn(d): return 1\ndef input_fn(b, c): return b\ndef output_fn(p, a): return p\n",
     "code/inference.py does not define predict_fn. The PyTorch serving container would use its defaults"),
    ("def model_fn(d): return 1\ndef transform_fn(m, b, c, a): return b\ndef input_fn(b, c): return b\n",
     "transform_fn cannot be combined with input_fn"),
    ("import credit_assets\n", "No module named 'credit_assets': model code runs in the SageMaker container"),
])
def test_serving_code_the_container_could_not_run_is_refused(sagemaker, local_artifacts, tmp_path, code, message):
    local_artifacts.write_text("h/in/part-0.csv", "a,1\n")
    archive = archive_of(tmp_path, {"model.json": "{}", "code/inference.py": code})
    local_artifacts.upload_file("models/h/model.tar.gz", archive)
    with pytest.raises(SageMakerJobError, match=message):
        transform(sagemaker, "models/h/model.tar.gz", "score-h", "h")
