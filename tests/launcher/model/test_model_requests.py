"""Pure request builders of the model workflow (launcher.model.requests) and tiling (launcher.model.tiles)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from launcher.aws import JOB_NAME, check_name
from launcher.model import requests as mj
from launcher.model.tiles import max_tile_side, plan_tiles, stitch

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/earthmon-training:latest"


def spec(**changes):
    base = dict(
        image=IMAGE,
        role=ROLE,
        channels=mj.channels_under("s3://bucket/sn6", ["label_map"]),
        output_path="s3://bucket/models/",
        hyperparameters={
            "num_classes": "2",
            "num_training_samples": "100",
            "algorithm": "deeplab",
            "epochs": "3",
        },
    )
    base.update(changes)
    return mj.TrainingSpec(**base)


# The built-in's log lines (docs/domain.md section 5), as the training image prints them.
LOG = """\
#quality_metric. host: algo-1, epoch: 0, train loss: 1.4757 .
#quality_metric. host: algo-1, epoch: 0, validation pixel_accuracy: 0.8472 .
#quality_metric. host: algo-1, epoch: 0, validation mIOU: 0.5063 .
#throughput_metric. host: algo-1, epoch: 0, train throughput: 55.04 samples/sec.
#quality_metric. host: algo-2, epoch: 11, validation mIOU: 6.1e-01 .
"""


def test_metric_definitions_parse_the_log_lines():
    found = {m["Name"]: re.findall(m["Regex"], LOG) for m in mj.METRIC_DEFINITIONS}
    assert found == {
        "train:loss": ["1.4757"],
        "validation:mIOU": ["0.5063", "6.1e-01"],
        "validation:pixel_accuracy": ["0.8472"],
        "train:throughput": ["55.04"],
    }


def test_training_job_request():
    request = mj.training_job_request(spec(spot=True, max_runtime_s=3600), "seg-1")
    assert request["TrainingJobName"] == "seg-1"
    assert request["HyperParameters"] == {
        "num_classes": "2",
        "num_training_samples": "100",
        "algorithm": "deeplab",
        "epochs": "3",
    }
    algo = request["AlgorithmSpecification"]
    assert algo["TrainingImage"] == IMAGE and algo["TrainingInputMode"] == "File"
    assert {m["Name"] for m in algo["MetricDefinitions"]} >= {
        "train:loss",
        "validation:mIOU",
        "validation:pixel_accuracy",
    }
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert list(channels) == ["train", "validation", "train_annotation", "validation_annotation", "label_map"]
    assert channels["train"]["DataSource"]["S3DataSource"] == {
        "S3DataType": "S3Prefix",
        "S3Uri": "s3://bucket/sn6/train/",
        "S3DataDistributionType": "FullyReplicated",
    }
    assert channels["train"]["ContentType"] == "image/jpeg"
    assert channels["validation_annotation"]["ContentType"] == "image/png"
    assert channels["label_map"]["ContentType"] == "application/json"
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert request["CheckpointConfig"] == {
        "S3Uri": "s3://bucket/models/seg-1/checkpoints/",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert request["OutputDataConfig"] == {"S3OutputPath": "s3://bucket/models/"}
    assert request["RoleArn"] == ROLE


def test_training_job_geotiff_and_explicit_checkpoint():
    request = mj.training_job_request(spec(data_format="geotiff", checkpoint_s3_uri="s3://b/ck/"), "seg-2")
    assert request["InputDataConfig"][0]["ContentType"] == "image/tiff"
    assert request["CheckpointConfig"]["S3Uri"] == "s3://b/ck/"
    assert request["EnableManagedSpotTraining"] is False
    assert "MaxWaitTimeInSeconds" not in request["StoppingCondition"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"role": "SageMakerRole"}, "IAM role ARN"),
        ({"output_path": "bucket/models"}, "s3://"),
        ({"channels": {"train": "s3://b/t/"}}, "missing channel"),
        ({"instance_count": 0}, "instance count"),
        ({"spot": True, "max_wait_s": 10, "max_runtime_s": 100}, "max wait"),
        ({"data_format": "png"}, "data format"),
    ],
)
def test_training_job_errors(changes, message):
    with pytest.raises(mj.RequestError, match=message):
        mj.training_job_request(spec(**changes), "seg-1")


@pytest.mark.parametrize("name", ["-bad", "has_underscore", "x" * 64, ""])
def test_bad_names(name):
    with pytest.raises(mj.RequestError, match="invalid"):
        check_name(name)


def test_job_name_is_valid_and_bounded():
    name = mj.job_name("segmentation training!", now=0)
    assert name == "segmentation-training-19700101-000000"
    short = mj.job_name("a-very-long-tuning-prefix-name", now=0, max_length=32)
    assert len(short) <= 32 and JOB_NAME.match(short)


def test_hyperparameters_parsing():
    assert mj.parse_hyperparameters(["epochs=10", "lr_scheduler_step=10,20", "x= y "]) == {
        "epochs": "10",
        "lr_scheduler_step": "10,20",
        "x": "y",
    }
    with pytest.raises(mj.RequestError, match="key=value"):
        mj.parse_hyperparameters(["epochs"])
    with pytest.raises(mj.RequestError, match="twice"):
        mj.parse_hyperparameters(["a=1", "a=2"])


def test_parse_range():
    assert mj.parse_range("learning_rate=1e-4:1e-1:log").as_request() == {
        "Name": "learning_rate",
        "MinValue": "0.0001",
        "MaxValue": "0.1",
        "ScalingType": "Logarithmic",
    }
    assert mj.parse_range("mini_batch_size=4:32:int").as_request() == {
        "Name": "mini_batch_size",
        "MinValue": "4",
        "MaxValue": "32",
        "ScalingType": "Linear",
    }
    assert mj.parse_range("optimizer=sgd, adam").as_request() == {
        "Name": "optimizer",
        "Values": ["sgd", "adam"],
    }
    for bad in ("lr", "lr=a:b", "lr=1:0", "lr=0:1:log", "lr=1:2:cubic"):
        with pytest.raises(mj.RequestError):
            mj.parse_range(bad)


def test_tuning_job_request():
    request = mj.tuning_job_request(
        spec(hyperparameters={"num_classes": "2", "learning_rate": "0.1"}), "seg-tune-1"
    )
    config = request["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "validation:mIOU"}
    ranges = config["ParameterRanges"]
    assert [r["Name"] for r in ranges["ContinuousParameterRanges"]] == [
        "learning_rate",
        "momentum",
        "weight_decay",
    ]
    assert ranges["IntegerParameterRanges"] == [
        {"Name": "mini_batch_size", "MinValue": "4", "MaxValue": "64", "ScalingType": "Linear"}
    ]
    assert ranges["CategoricalParameterRanges"][0]["Name"] == "optimizer"
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 10, "MaxParallelTrainingJobs": 2}
    definition = request["TrainingJobDefinition"]
    assert definition["StaticHyperParameters"] == {"num_classes": "2"}  # tuned learning_rate removed
    assert definition["AlgorithmSpecification"]["MetricDefinitions"] == [
        dict(m) for m in mj.METRIC_DEFINITIONS
    ]
    with pytest.raises(mj.RequestError, match="tuning job name"):
        mj.tuning_job_request(spec(), "x" * 33)
    with pytest.raises(mj.RequestError, match="objective"):
        mj.tuning_job_request(spec(), "t", objective="train:loss")
    with pytest.raises(mj.RequestError, match="parallel"):
        mj.tuning_job_request(spec(), "t", max_jobs=2, max_parallel=3)


def test_best_job_report():
    report = mj.best_job_report(
        {
            "HyperParameterTuningJobName": "t",
            "HyperParameterTuningJobStatus": "Completed",
            "TrainingJobStatusCounters": {"Completed": 3},
            "BestTrainingJob": {
                "TrainingJobName": "t-002",
                "TunedHyperParameters": {"learning_rate": "0.01"},
                "FinalHyperParameterTuningJobObjectiveMetric": {
                    "MetricName": "validation:mIOU",
                    "Value": 0.71,
                },
            },
        }
    )
    assert report["best_training_job"] == "t-002" and report["objective_value"] == 0.71
    assert mj.best_job_report({"HyperParameterTuningJobStatus": "Failed"})["best_training_job"] is None


def test_deploy_requests():
    requests = mj.deploy_requests(
        mj.DeploySpec(
            name="sn6-buildings",
            image=IMAGE,
            model_data="s3://bucket/models/seg-1/output/model.tar.gz",
            role=ROLE,
            instance_count=2,
            environment={"EARTHMON_WINDOW_BATCH": "8"},
        )
    )
    assert requests["CreateModel"] == {
        "ModelName": "sn6-buildings",
        "PrimaryContainer": {
            "Image": IMAGE,
            "ModelDataUrl": "s3://bucket/models/seg-1/output/model.tar.gz",
            "Environment": {"EARTHMON_WINDOW_BATCH": "8"},
        },
        "ExecutionRoleArn": ROLE,
    }
    variant = requests["CreateEndpointConfig"]["ProductionVariants"][0]
    assert variant["ModelName"] == "sn6-buildings" and variant["InitialInstanceCount"] == 2
    assert requests["CreateEndpoint"] == {
        "EndpointName": "sn6-buildings",
        "EndpointConfigName": "sn6-buildings",
    }
    with pytest.raises(mj.RequestError, match="model.tar.gz"):
        mj.deploy_requests(mj.DeploySpec("e", IMAGE, "s3://b/model/", ROLE))
    with pytest.raises(mj.RequestError, match="unknown serving setting"):
        mj.deploy_requests(mj.DeploySpec("e", IMAGE, "s3://b/model.tar.gz", ROLE, environment={"FOO": "1"}))


# ----------------------------------------------------------------------------------------------- tiling
def test_tile_side_fits_the_payload():
    side = max_tile_side(bands=4, itemsize=4, max_payload_mb=6)
    assert side * side * 16 < 6 * 1024 * 1024 * 0.97
    assert (side + 1) ** 2 * 16 > 6 * 1024 * 1024 * 0.97 - 64 * 1024
    with pytest.raises(ValueError, match="max-payload-mb"):
        max_tile_side(bands=4, itemsize=8, max_payload_mb=0.05)


@pytest.mark.parametrize(
    ("height", "width", "side", "margin"), [(500, 300, 128, 16), (97, 1000, 64, 8), (50, 50, 64, 8)]
)
def test_cores_partition_the_image_and_reads_fit(height, width, side, margin):
    tiles = plan_tiles(height, width, side, margin)
    owner = np.zeros((height, width), int)
    for tile in tiles:
        owner[tile.core.slices] += 1
        assert tile.read.height <= side and tile.read.width <= side
        assert tile.read.row <= tile.core.row and tile.read.col <= tile.core.col
        assert tile.read.row + tile.read.height <= height and tile.read.col + tile.read.width <= width
        # the core has a full margin of context wherever the image allows it
        assert tile.core.row - tile.read.row == min(margin, tile.core.row)
    assert (owner == 1).all()


def test_stitch_of_a_pointwise_model_equals_the_whole_image():
    image = np.random.default_rng(0).integers(0, 5, (300, 410)).astype(np.uint8)
    tiles = plan_tiles(*image.shape, tile_side=100, margin=20)
    mask = stitch(*image.shape, ((t, image[t.read.slices] * 2) for t in tiles))
    np.testing.assert_array_equal(mask, image * 2)
    with pytest.raises(ValueError, match="returned"):
        stitch(*image.shape, ((t, image[:2, :2]) for t in tiles))
    with pytest.raises(ValueError, match="not predicted"):
        stitch(*image.shape, ((t, image[t.read.slices]) for t in tiles[:-1]))
