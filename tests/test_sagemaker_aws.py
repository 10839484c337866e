"""The aws SageMaker backend against moto's server: the API calls and their arguments.

moto records jobs and reports them Completed at once without running code, so where a real job would write
its output (model.tar.gz, <file>.out) the test puts it in place, as SageMaker would.
"""

import io
import json
import tarfile

import pytest

from resources.sagemaker import AwsSageMakerJobs, ModelArchiveError, SageMakerJobError, failure_message

ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.8.0-cpu-py312"


@pytest.fixture
def sagemaker(s3_artifacts, moto):
    s3_artifacts.write_text("data/train/part-0.csv", "a,1\n")
    return AwsSageMakerJobs(
        artifacts=s3_artifacts, region_name="us-east-1", endpoint_url=moto, role_arn=ROLE,
        training_image=IMAGE, inference_image=IMAGE.replace("training", "inference"), poll_seconds=0.01,
        max_wait_seconds=5,
    )


def model_tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_training_job_request_and_result(sagemaker, s3_artifacts, code_dir, boto_client):
    # what the job would leave behind in S3
    s3_artifacts.write_bytes("training/credit-1/output/model.tar.gz", model_tarball({"model.json": b'{"lr": 2}'}))
    job = sagemaker.train(
        job_name="credit-1", source_dir=code_dir, entry_point="train.py", channels={"train": "data/train"},
        hyperparameters={"epochs": 3, "lr": 0.5}, output_prefix="training", tags={"MODEL_DB_SYNC": "true", "team": "risk"},
    )
    client = boto_client("sagemaker")
    described = client.describe_training_job(TrainingJobName="credit-1")
    assert described["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert described["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert described["RoleArn"] == ROLE
    hps = described["HyperParameters"]
    assert hps["epochs"] == "3" and json.loads(hps["lr"]) == 0.5  # JSON-encoded, as the SDK sends them
    assert json.loads(hps["sagemaker_program"]) == "train.py"
    assert json.loads(hps["sagemaker_submit_directory"]) == "s3://ml-artifacts/platform/sagemaker/code/credit-1/sourcedir.tar.gz"
    [channel] = described["InputDataConfig"]
    assert channel["ChannelName"] == "train"
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == "s3://ml-artifacts/platform/data/train"
    assert described["OutputDataConfig"]["S3OutputPath"] == "s3://ml-artifacts/platform/training"
    assert described["ResourceConfig"]["InstanceType"] == "ml.m5.xlarge"
    tags = client.list_tags(ResourceArn=described["TrainingJobArn"])["Tags"]
    assert {t["Key"]: t["Value"] for t in tags} == {"MODEL_DB_SYNC": "true", "team": "risk"}
    # the uploaded source folder is the script-mode code
    with tarfile.open(fileobj=io.BytesIO(s3_artifacts.read_bytes("sagemaker/code/credit-1/sourcedir.tar.gz"))) as tar:
        assert sorted(tar.getnames()) == ["inference.py", "train.py"]
    assert job.model_data_uri == "s3://ml-artifacts/platform/training/credit-1/output/model.tar.gz"
    assert json.loads(open(f"{job.model_dir}/model.json").read()) == {"lr": 2}
    assert job.hyperparameters == {"epochs": "3", "lr": "0.5"}

    [listed] = sagemaker.list_training_jobs()
    assert listed.name == "credit-1" and listed.tags == {"MODEL_DB_SYNC": "true", "team": "risk"}
    assert listed.input_channels == {"train": "s3://ml-artifacts/platform/data/train"}


def test_training_jobs_are_listed_newest_first_up_to_the_limit(sagemaker, s3_artifacts, code_dir):
    for name in ("job-a", "job-b", "job-c"):
        s3_artifacts.write_bytes(f"training/{name}/output/model.tar.gz", model_tarball({"model.json": b"{}"}))
        sagemaker.train(job_name=name, source_dir=code_dir, entry_point="train.py", channels={"train": "data/train"},
                        hyperparameters={}, output_prefix="training", tags={"n": name})
    assert [job.name for job in sagemaker.list_training_jobs()] == ["job-c", "job-b", "job-a"]
    assert len(sagemaker.list_training_jobs(max_results=2)) == 2  # which two is the server's sort (moto ignores it)
    assert sagemaker.list_training_jobs(status="Failed") == []
    assert sagemaker.training_job_names() == ["job-c", "job-b", "job-a"]  # one listing call, no describes
    problems = []
    [described] = sagemaker.describe_training_jobs(["job-a", "never-ran"], problems)
    assert described.name == "job-a" and described.tags == {"n": "job-a"}
    assert len(problems) == 1 and "training job never-ran could not be described" in problems[0]


def test_training_without_model_output_is_an_error(sagemaker, code_dir):
    with pytest.raises(FileNotFoundError, match=r"no artifact at s3://ml-artifacts/platform/training/ghost/output/model\.tar\.gz"):
        sagemaker.train(job_name="ghost", source_dir=code_dir, entry_point="train.py", channels={"train": "data/train"},
                        hyperparameters={}, output_prefix="training")


class ObservedSageMaker(AwsSageMakerJobs):
    """The aws backend, looking at the model while its transform job runs, as SageMaker would run it; when
    `writes_output` it also writes the `.out` files the job would write."""

    def _wait(self, kind, describe):
        description = super()._wait(kind, describe)
        if kind == "Transform":
            client = self.client()
            OBSERVED["model"] = client.describe_model(ModelName=description["TransformJobName"])
            if OBSERVED.get("writes_output"):
                for part in ("part-00000.csv", "part-00001.csv"):
                    self.artifacts.write_text(f"batch/out/{part}.out", "x,1\n")
        return description


OBSERVED: dict = {}


def observed(sagemaker: AwsSageMakerJobs) -> ObservedSageMaker:
    return ObservedSageMaker(**{name: getattr(sagemaker, name) for name in AwsSageMakerJobs.model_fields})


def test_batch_transform_request(sagemaker, s3_artifacts, code_dir, boto_client):
    s3_artifacts.write_bytes("models/v1/model.tar.gz", model_tarball({"model.json": b'{"lr": 2}',
                                                                      "code/inference.py": b"def model_fn(d): ..."}))
    s3_artifacts.write_text("batch/in/part-00000.csv", "a,1\n")
    s3_artifacts.write_text("batch/in/part-00001.csv", "b,2\n")
    OBSERVED.clear()
    with pytest.raises(SageMakerJobError, match=r"completed but wrote no output for 2 input file\(s\)"):
        observed(sagemaker).batch_transform(job_name="score-1", model_data_key="models/v1/model.tar.gz",
                                            input_prefix="batch/in", output_prefix="batch/out")
    client = boto_client("sagemaker")
    model = OBSERVED["model"]
    assert model["PrimaryContainer"]["ModelDataUrl"] == "s3://ml-artifacts/platform/models/v1/model.tar.gz"
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    # the code comes from model.tar.gz, as after the SDK's repack; no source tarball that the container ignores
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
    assert model["PrimaryContainer"]["Image"].endswith("pytorch-inference:2.8.0-cpu-py312")
    assert model["ExecutionRoleArn"] == ROLE
    with pytest.raises(client.exceptions.ClientError):  # the model lived only as long as its transform
        client.describe_model(ModelName="score-1")
    described = client.describe_transform_job(TransformJobName="score-1")
    assert described["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://ml-artifacts/platform/batch/in"
    assert described["TransformInput"]["SplitType"] == "Line" and described["TransformInput"]["ContentType"] == "text/csv"
    assert described["TransformOutput"]["S3OutputPath"] == "s3://ml-artifacts/platform/batch/out"
    assert described["TransformOutput"]["AssembleWith"] == "Line"
    assert described["BatchStrategy"] == "MultiRecord"

    OBSERVED["writes_output"] = True
    job = observed(sagemaker).batch_transform(
        job_name="score-2", model_data_key="models/v1/model.tar.gz", input_prefix="batch/in", output_prefix="batch/out")
    assert job.output_keys == ["batch/out/part-00000.csv.out", "batch/out/part-00001.csv.out"]


def test_failed_and_stopped_jobs_become_clear_errors():
    failed = {"TrainingJobName": "credit-9", "TrainingJobStatus": "Failed",
              "FailureReason": "AlgorithmError: ExecuteUserScriptError: exit code 1"}
    assert failure_message("Training", failed) == (
        "SageMaker training job credit-9 ended Failed: AlgorithmError: ExecuteUserScriptError: exit code 1")
    stopped = {"TransformJobName": "score-3", "TransformJobStatus": "Stopped"}
    assert failure_message("Transform", stopped) == "SageMaker transform job score-3 ended Stopped: stopped before completing"


def test_waiting_raises_on_failure_and_on_timeout(sagemaker):
    states = iter([{"TrainingJobName": "j", "TrainingJobStatus": "InProgress"},
                   {"TrainingJobName": "j", "TrainingJobStatus": "Failed", "FailureReason": "OOM"}])
    with pytest.raises(SageMakerJobError, match="ended Failed: OOM"):
        sagemaker._wait("Training", lambda: next(states))
    slow = sagemaker.model_copy(update={"max_wait_seconds": 0})
    with pytest.raises(SageMakerJobError, match="still InProgress after 0s"):
        slow._wait("Training", lambda: {"TrainingJobName": "j", "TrainingJobStatus": "InProgress"})


def test_framework_image_is_looked_up_by_the_sagemaker_sdk(s3_artifacts):
    resource = AwsSageMakerJobs(artifacts=s3_artifacts, region_name="eu-west-1", role_arn=ROLE)
    assert resource.image_uri("training") == "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.8.0-cpu-py312"
    assert resource.image_uri("inference") == "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-inference:2.6.0-cpu-py312"


def test_aws_backend_needs_a_role(s3_artifacts, code_dir, moto):
    resource = AwsSageMakerJobs(artifacts=s3_artifacts, endpoint_url=moto, training_image=IMAGE)
    s3_artifacts.write_text("data/train/x.csv", "1\n")
    with pytest.raises(SageMakerJobError, match="SAGEMAKER_ROLE_ARN"):
        resource.train(job_name="j", source_dir=code_dir, entry_point="train.py", channels={"train": "data/train"},
                       hyperparameters={}, output_prefix="training")


def test_a_model_the_container_cannot_serve_creates_nothing(sagemaker, s3_artifacts, boto_client):
    s3_artifacts.write_bytes("models/bare/model.tar.gz", model_tarball({"model.pt": b"weights"}))
    s3_artifacts.write_text("batch/in/part-00000.csv", "a,1\n")
    with pytest.raises(ModelArchiveError, match=r"s3://ml-artifacts/platform/models/bare/model\.tar\.gz has no "
                                                r"code/inference\.py"):
        sagemaker.batch_transform(job_name="score-bare", model_data_key="models/bare/model.tar.gz",
                                  input_prefix="batch/in", output_prefix="batch/out")
    client = boto_client("sagemaker")
    assert client.list_models()["Models"] == [] and client.list_transform_jobs()["TransformJobSummaries"] == []


def test_instance_counts_reach_the_requests(sagemaker, s3_artifacts, boto_client):
    s3_artifacts.write_bytes("models/v1/model.tar.gz", model_tarball({"code/inference.py": b""}))
    s3_artifacts.write_text("batch/in/part-00000.csv", "a,1\n")
    scaled = sagemaker.model_copy(update={"transform_instance_count": 3, "training_instance_count": 2})
    with pytest.raises(SageMakerJobError, match="wrote no output"):
        scaled.batch_transform(job_name="score-3", model_data_key="models/v1/model.tar.gz", input_prefix="batch/in",
                               output_prefix="batch/out")
    client = boto_client("sagemaker")
    assert client.describe_transform_job(TransformJobName="score-3")["TransformResources"]["InstanceCount"] == 3
    request = scaled.training_request(job_name="t", source_uri="s3://b/s.tar.gz", entry_point="train.py", channels={},
                                      hyperparameters={}, output_prefix="o", tags={}, metric_definitions=[])
    assert request["ResourceConfig"]["InstanceCount"] == 2
