"""`launcher train | tune | deploy | predict` against a moto server, asserting on the requests sent."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from launcher.cli import cli

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/earthmon-training:1"
BUCKET = "earthmon-test"


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def last_json(output: str):
    """The JSON document a command printed last (after any status lines)."""
    start = output.rfind("\n{")
    return json.loads(output[start + 1 if start >= 0 else output.index("{") :])


@pytest.fixture
def data_prefix(aws):
    """A prepared-data prefix in moto S3 with the built-in channel layout and a label map (no pretrained/)."""
    import launcher.aws as launcher_aws

    s3 = launcher_aws.client("s3")
    for channel in ("train", "validation", "train_annotation", "validation_annotation", "label_map"):
        s3.put_object(Bucket=BUCKET, Key=f"sn6/{channel}/a.bin", Body=b"x")
    aws.calls.clear()
    return f"s3://{BUCKET}/sn6/"


def test_train_sends_the_training_job_and_reports(aws, data_prefix):
    result = run(
        "train", "--image", IMAGE, "--role", ROLE, "--channels", data_prefix,
        "--hp", "num_classes=2", "--hp", "num_training_samples=10", "--hp", "algorithm=deeplab",
        "--spot", "--max-runtime", "3600", "--name", "seg-test-1", "--poll", "0.01",
    )  # fmt: skip
    (create,) = aws.sent("sagemaker", "CreateTrainingJob")
    body = create.body
    assert body["TrainingJobName"] == "seg-test-1"
    assert body["HyperParameters"] == {
        "num_classes": "2",
        "num_training_samples": "10",
        "algorithm": "deeplab",
    }
    assert [c["ChannelName"] for c in body["InputDataConfig"]] == [
        "train", "validation", "train_annotation", "validation_annotation", "label_map",
    ]  # fmt: skip
    assert body["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == f"{data_prefix}train/"
    names = {m["Name"] for m in body["AlgorithmSpecification"]["MetricDefinitions"]}
    assert {"train:loss", "validation:mIOU", "validation:pixel_accuracy"} <= names
    assert body["EnableManagedSpotTraining"] is True
    assert body["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert body["CheckpointConfig"]["S3Uri"] == f"{data_prefix}output/seg-test-1/checkpoints/"
    assert body["OutputDataConfig"]["S3OutputPath"] == f"{data_prefix}output/"
    assert aws.sent("sagemaker", "DescribeTrainingJob")
    report = last_json(result.output)
    assert report["training_job"] == "seg-test-1" and report["status"] == "Completed"


def test_train_refuses_incomplete_data(aws):
    import launcher.aws as launcher_aws

    launcher_aws.client("s3").put_object(Bucket=BUCKET, Key="half/train/a.jpg", Body=b"x")
    result = run("train", "--image", IMAGE, "--role", ROLE, "--channels", f"s3://{BUCKET}/half/", ok=False)
    assert result.exit_code != 0
    assert "validation/" in result.output and "prepare" in result.output
    assert not aws.sent("sagemaker")


def test_train_dry_run_sends_nothing(aws):
    result = run(
        "train", "--image", IMAGE, "--role", ROLE, "--channels", "s3://b/sn6", "--hp", "epochs=1", "--dry-run",
        "--name", "dry-1",
    )  # fmt: skip
    request = json.loads(result.output)
    assert request["TrainingJobName"] == "dry-1" and request["HyperParameters"] == {"epochs": "1"}
    assert aws.calls == []


def test_train_local_dry_run_builds_estimator_arguments(aws):
    result = run(
        "train", "--image", IMAGE, "--role", ROLE, "--channel", "train=file:///data/train",
        "--channel", "validation=file:///data/validation", "--output", "file:///tmp/out", "--local", "--dry-run",
        "--name", "local-1",
    )  # fmt: skip
    args = json.loads(result.output)
    assert args["estimator"]["instance_type"] == "local" and args["estimator"]["image_uri"] == IMAGE
    assert args["fit"]["inputs"] == {"train": "file:///data/train", "validation": "file:///data/validation"}
    assert aws.calls == []


def test_tune_sends_the_tuning_job_and_reports_the_best(aws, data_prefix):
    result = run(
        "tune", "--image", IMAGE, "--role", ROLE, "--channels", data_prefix, "--hp", "num_classes=2",
        "--hp", "learning_rate=0.5", "--range", "learning_rate=1e-3:1e-2:log", "--max-jobs", "4",
        "--max-parallel", "2", "--name", "seg-tune-1", "--poll", "0.01",
    )  # fmt: skip
    (create,) = aws.sent("sagemaker", "CreateHyperParameterTuningJob")
    config = create.body["HyperParameterTuningJobConfig"]
    assert create.body["HyperParameterTuningJobName"] == "seg-tune-1"
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "validation:mIOU"}
    continuous = {r["Name"]: r for r in config["ParameterRanges"]["ContinuousParameterRanges"]}
    assert continuous["learning_rate"] == {
        "Name": "learning_rate", "MinValue": "0.001", "MaxValue": "0.01", "ScalingType": "Logarithmic",
    }  # fmt: skip
    assert set(continuous) == {"learning_rate", "momentum", "weight_decay"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 4, "MaxParallelTrainingJobs": 2}
    assert create.body["TrainingJobDefinition"]["StaticHyperParameters"] == {"num_classes": "2"}
    report = last_json(result.output)
    assert report["tuning_job"] == "seg-tune-1" and report["status"] == "Completed"
    assert "best_training_job" in report


def test_deploy_from_a_training_job(aws, data_prefix):
    run(
        "train",
        "--image",
        IMAGE,
        "--role",
        ROLE,
        "--channels",
        data_prefix,
        "--name",
        "seg-dep-1",
        "--no-wait",
    )
    aws.calls.clear()
    run(
        "deploy", "--name", "sn6-buildings", "--image", IMAGE, "--role", ROLE, "--training-job", "seg-dep-1",
        "--instance-count", "2", "--env", "EARTHMON_WINDOW_BATCH=8", "--poll", "0.01",
    )  # fmt: skip
    ops = [c.operation for c in aws.sent("sagemaker")]
    assert ops[:5] == [
        "DescribeTrainingJob",
        "DescribeEndpoint",
        "CreateModel",
        "CreateEndpointConfig",
        "CreateEndpoint",
    ]
    (model,) = aws.sent("sagemaker", "CreateModel")
    container = model.body["PrimaryContainer"]
    assert container["Image"] == IMAGE and container["Environment"] == {"EARTHMON_WINDOW_BATCH": "8"}
    assert re.match(r"s3://.+model\.tar\.gz$", container["ModelDataUrl"])
    (config,) = aws.sent("sagemaker", "CreateEndpointConfig")
    assert config.body["ProductionVariants"][0]["InitialInstanceCount"] == 2
    (endpoint,) = aws.sent("sagemaker", "CreateEndpoint")
    assert endpoint.body == {"EndpointName": "sn6-buildings", "EndpointConfigName": "sn6-buildings"}
    # a second deploy under the same name is refused before creating anything
    aws.calls.clear()
    again = run(
        "deploy", "--name", "sn6-buildings", "--image", IMAGE, "--role", ROLE,
        "--model-data", "s3://b/m/model.tar.gz", ok=False,
    )  # fmt: skip
    assert again.exit_code != 0 and "already exists" in again.output
    assert [c.operation for c in aws.sent("sagemaker")] == ["DescribeEndpoint"]


# ----------------------------------------------------------------------------------------------- predict
def write_scene(path: Path, height: int = 300, width: int = 410, bands: int = 2):
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    data = np.random.default_rng(1).random((bands, height, width), dtype=np.float32)
    transform = from_origin(594000.0, 5757000.0, 0.5, 0.5)
    profile = dict(driver="GTiff", width=width, height=height, count=bands, dtype="float32")
    with rasterio.open(path, "w", crs=CRS.from_epsg(32631), transform=transform, **profile) as dst:
        dst.write(data)
    return data, transform


def threshold_model(body: bytes) -> bytes:
    """A per-pixel 'model' (class 1 where band 1 > 0.5) answering an indexed PNG, as the image's server does."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    warnings.simplefilter("ignore", NotGeoreferencedWarning)
    with MemoryFile(body) as mem, mem.open() as src:
        mask = (src.read(1) > 0.5).astype(np.uint8)
    with MemoryFile() as mem:
        with mem.open(driver="PNG", width=mask.shape[1], height=mask.shape[0], count=1, dtype="uint8") as dst:
            dst.write(mask, 1)
        return mem.read()


class _Stream(io.BytesIO):  # what botocore reads a streamed response body from
    def stream(self, **_):
        yield self.getvalue()


def answer_invocations(answer):
    """Answer InvokeEndpoint in place of the (absent) model container: moto's InvokeEndpoint returns canned
    text and cannot take binary bodies. Returns the requests seen (url, headers, body)."""
    from botocore.awsrequest import AWSResponse

    import launcher.aws as launcher_aws

    seen = []

    def handler(request, **_):
        body = bytes(request.body)
        seen.append(
            (
                request.url,
                {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()},
                body,
            )
        )
        content_type, payload = answer(body)
        headers = {"Content-Type": content_type, "x-amzn-requestid": "test"}
        return AWSResponse(request.url, 200, headers, _Stream(payload))

    launcher_aws.session().events.register("before-send.sagemaker-runtime.InvokeEndpoint", handler)
    return seen


def test_predict_tiles_through_the_endpoint_and_stitches(aws, tmp_path):
    import rasterio

    data, transform = write_scene(tmp_path / "scene.tif")
    seen = answer_invocations(lambda body: ("image/png", threshold_model(body)))
    out = tmp_path / "mask.tif"
    result = run(
        "predict", str(tmp_path / "scene.tif"), "--out", str(out), "--endpoint", "sn6-buildings",
        "--max-payload-mb", "0.3", "--margin", "16",
    )  # fmt: skip
    summary = last_json(result.output)
    calls = aws.sent("sagemaker-runtime", "InvokeEndpoint")
    assert summary["tiles"] == len(calls) == len(seen) > 1
    for url, headers, body in seen:
        assert url.endswith("/endpoints/sn6-buildings/invocations")
        assert headers["Content-Type"] == "image/tiff" and headers["Accept"] == "image/png"
        assert len(body) <= 0.3 * 1024 * 1024
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32631 and src.transform == transform
        np.testing.assert_array_equal(src.read(1), (data[0] > 0.5).astype(np.uint8))


def test_predict_reports_a_bad_endpoint_answer(aws, tmp_path):
    answer_invocations(lambda body: ("application/json", b'{"not": "a mask"}'))
    write_scene(tmp_path / "scene.tif", 64, 64)
    result = run(
        "predict",
        str(tmp_path / "scene.tif"),
        "--out",
        str(tmp_path / "m.tif"),
        "--endpoint",
        "nowhere",
        ok=False,
    )
    assert result.exit_code != 0 and "not a readable image/png mask" in result.output
    assert not (tmp_path / "m.tif").exists()
    assert len(aws.sent("sagemaker-runtime", "InvokeEndpoint")) == 1


def test_predict_needs_exactly_one_target(tmp_path):
    write_scene(tmp_path / "scene.tif", 8, 8)
    result = run("predict", str(tmp_path / "scene.tif"), "--out", str(tmp_path / "m.tif"), ok=False)
    assert result.exit_code == 2 and "exactly one of" in result.output


def test_npy_tiles_round_trip():
    from launcher.model.predict import encode_tile

    tile = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(np.load(io.BytesIO(encode_tile(tile, "application/x-npy"))), tile)


def test_deploy_local_dry_run_builds_model_arguments(aws):
    result = run(
        "deploy", "--name", "local-ep", "--image", IMAGE, "--role", ROLE, "--model-data", "file:///tmp/model.tar.gz",
        "--env", "SAGEMAKER_MODEL_SERVER_WORKERS=1", "--local", "--dry-run",
    )  # fmt: skip
    args = json.loads(result.output)
    assert args["model"] == {
        "image_uri": IMAGE,
        "model_data": "file:///tmp/model.tar.gz",
        "role": ROLE,
        "env": {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"},
    }
    assert args["deploy"] == {"initial_instance_count": 1, "instance_type": "local"}
    assert aws.calls == []


def test_local_mode_is_importable():
    from sagemaker.estimator import Estimator  # noqa: F401 - what train --local uses
    from sagemaker.local import LocalSagemakerRuntimeClient, LocalSession  # noqa: F401
    from sagemaker.model import Model  # noqa: F401

    from launcher.model import local_mode as model_local
    from launcher.model import predict as model_predict

    assert callable(model_local.train_local) and callable(model_local.deploy_local)
    assert callable(model_predict.local_invoker)


def test_model_commands_import_no_heavy_modules():
    """`launcher --help` stays instant: the model commands import boto3, sagemaker, rasterio only when run."""
    import subprocess
    import sys

    code = (
        "import sys, launcher.cli.model; "
        "print(sorted(m for m in ('boto3', 'sagemaker', 'rasterio', 'numpy', 'requests') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_deploy_local_refuses_a_taken_port(monkeypatch):
    """Local mode would take another server's /ping for its own: the port is checked first, with what to do."""
    import socket

    from launcher.model import local_mode as model_local

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert model_local.port_in_use(port)
        monkeypatch.setattr(model_local, "LOCAL_PORT", port)
        with pytest.raises(RuntimeError, match=rf"port {port} is already in use .*docker rm -f"):
            model_local.deploy_local("img", "s3://b/model.tar.gz", "arn:aws:iam::0:role/r", {})
    assert not model_local.port_in_use(port)


def test_local_mode_cleans_up_only_its_own_compose_containers(tmp_path):
    """After Ctrl-C, deploy/train --local remove the containers of the compose projects under their own scratch
    folder: not another run's, not a sibling folder sharing the prefix, not containers without the label."""
    from launcher.sdk_local import containers_under

    scratch = tmp_path / "earthmon-local-mode-abc"
    (scratch / "tmpx1").mkdir(parents=True)
    (tmp_path / "earthmon-local-mode-abcdef" / "tmpy").mkdir(parents=True)
    (tmp_path / "link").symlink_to(scratch)
    rows = [
        ("ours", str(scratch / "tmpx1")),
        ("ours-through-a-link", str(tmp_path / "link" / "tmpx1")),
        ("sibling-prefix", str(tmp_path / "earthmon-local-mode-abcdef" / "tmpy")),
        ("elsewhere", "/srv/compose/project"),
        ("no-label", ""),
        ("the-root-itself", str(scratch)),
    ]
    assert containers_under(rows, str(scratch)) == ["ours", "ours-through-a-link", "the-root-itself"]
    assert containers_under([], str(scratch)) == []


# ----------------------------------------------------------------------------------------------- script mode
@pytest.fixture
def source_tree(tmp_path):
    """A user's code folder: the script, a helper module, a link inside the folder."""
    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    (src / "fit.py").write_text("import lib.util\nprint('val_loss=0.5')\n")
    (src / "lib" / "util.py").write_text("X = 1\n")
    (src / "lib" / "alias.py").symlink_to(src / "lib" / "util.py")
    return src


def _tar_members(body: bytes) -> dict[str, bytes]:
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_train_entry_point_uploads_the_code_and_names_it_in_the_request(aws, source_tree):
    out = f"s3://{BUCKET}/runs/"
    result = run(
        "train", "--image", IMAGE, "--role", ROLE, "--entry-point", str(source_tree / "fit.py"),
        "--channel", "tiles=s3://b/tiles/", "--channel", "my.extra-data_2=s3://b/extra/", "--output", out,
        "--hp", "epochs=3", "--metric", "val:loss=val_loss=([0-9.]+)", "--name", "script-1", "--no-wait",
    )  # fmt: skip
    assert result.output.strip().endswith("script-1")
    (create,) = aws.sent("sagemaker", "CreateTrainingJob")
    body = create.body
    submit = f"s3://{BUCKET}/runs/script-1/source/sourcedir.tar.gz"
    assert body["HyperParameters"] == {
        "epochs": "3",
        "sagemaker_program": '"fit.py"',
        "sagemaker_submit_directory": json.dumps(submit),
    }
    # the script owns its channels: any names, no built-in layout or content types, no discovery in S3
    assert [(c["ChannelName"], c["DataSource"]["S3DataSource"]["S3Uri"]) for c in body["InputDataConfig"]] == [
        ("tiles", "s3://b/tiles/"), ("my.extra-data_2", "s3://b/extra/"),
    ]  # fmt: skip
    assert not any("ContentType" in c for c in body["InputDataConfig"])
    assert body["AlgorithmSpecification"]["MetricDefinitions"] == [
        {"Name": "val:loss", "Regex": "val_loss=([0-9.]+)"}
    ]
    assert not aws.sent("s3", "ListObjectsV2")
    # the code was uploaded before the job was created, where the hyperparameter says
    ops = [(c.service, c.operation) for c in aws.sent()]
    assert ops.index(("s3", "PutObject")) < ops.index(("sagemaker", "CreateTrainingJob"))
    import launcher.aws as launcher_aws

    tarball = launcher_aws.client("s3").get_object(Bucket=BUCKET, Key="runs/script-1/source/sourcedir.tar.gz")
    members = _tar_members(tarball["Body"].read())
    assert members == {
        "fit.py": (source_tree / "fit.py").read_bytes(),
        "lib/util.py": b"X = 1\n",
        "lib/alias.py": b"X = 1\n",  # a link inside the folder: packed as its file
    }


def test_train_entry_point_in_a_source_dir_without_metrics_or_channels(aws, source_tree):
    (source_tree / "jobs").mkdir()
    (source_tree / "jobs" / "run.py").write_text("pass\n")
    result = run(
        "train", "--image", IMAGE, "--role", ROLE, "--entry-point", "jobs/run.py", "--source-dir", str(source_tree),
        "--output", f"s3://{BUCKET}/runs", "--name", "script-2", "--dry-run",
    )  # fmt: skip
    request = last_json(result.output.split("would upload")[0])
    assert request["HyperParameters"]["sagemaker_program"] == '"jobs/run.py"'
    assert "MetricDefinitions" not in request["AlgorithmSpecification"]
    assert "InputDataConfig" not in request
    assert f"to s3://{BUCKET}/runs/script-2/source/sourcedir.tar.gz" in result.output
    assert aws.calls == []  # a dry run uploads nothing


def test_train_entry_point_local_dry_run_gives_the_sdk_the_script(aws, source_tree):
    result = run(
        "train", "--image", IMAGE, "--role", ROLE, "--entry-point", str(source_tree / "fit.py"),
        "--channel", "train=file:///data/train", "--output", "file:///tmp/out", "--local", "--dry-run",
        "--name", "local-script",
    )  # fmt: skip
    args = json.loads(result.output)
    assert args["estimator"]["entry_point"] == "fit.py"
    assert args["estimator"]["source_dir"] == str(source_tree.resolve())
    assert "sagemaker_program" not in args["estimator"]["hyperparameters"]  # the SDK sets it
    assert args["estimator"]["metric_definitions"] == []
    assert args["fit"]["inputs"] == {"train": "file:///data/train"}
    assert aws.calls == []


def test_train_refuses_bad_entry_points_in_one_line(aws, source_tree, tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text("pass\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "fit.py").write_text("pass\n")
    (linked / "key").symlink_to(secret)
    base = ["train", "--image", IMAGE, "--role", ROLE, "--output", f"s3://{BUCKET}/runs/", "--name", "bad-1"]
    src = str(source_tree)
    cases = [
        (["--entry-point", str(tmp_path / "missing.py")], "no such file"),
        (["--entry-point", "../outside.py", "--source-dir", src], "'..' path segment"),
        (["--entry-point", str(outside), "--source-dir", src], "is outside --source-dir"),
        (["--entry-point", "nope.py", "--source-dir", src], "no such file"),
        (["--entry-point", "fit.py", "--source-dir", str(tmp_path / "nodir")], "no such folder"),
        (["--entry-point", str(linked / "fit.py")], "links outside the folder"),
        (["--entry-point", str(source_tree / "fit.py"), "--metric", "loss=([0-9"], "does not compile"),
        (["--entry-point", str(source_tree / "fit.py"), "--metric", "loss=[0-9]+"], "group"),
        (
            ["--entry-point", str(source_tree / "fit.py"), "--hp", "sagemaker_program=x.py"],
            "set by --entry-point",
        ),
        (["--entry-point", str(source_tree / "fit.py"), "--channels", "s3://b/sn6/"], "--channel NAME="),
        (["--entry-point", str(source_tree / "fit.py"), "--channel", "bad name=s3://b/x/"], "channel name"),
        (["--source-dir", src, "--channels", "s3://b/sn6/"], "go with --entry-point"),
    ]
    for extra, needle in cases:
        result = CliRunner().invoke(cli, [*base, *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert needle in result.output and "Traceback" not in result.output, (extra, result.output)
        assert "s3cr3t" not in result.output
    assert not aws.sent("sagemaker") and not aws.sent("s3", "PutObject")
