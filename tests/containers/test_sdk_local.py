"""SageMaker SDK 2.x local mode (Debian's docker-compose 1.29) against a moto S3: a training job of the training
image through `launcher train --local` (model.tar.gz lands in S3), and the processing profile local mode
supports (one instance, S3Prefix, FullyReplicated, EndOfJob) with the processing image."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from earthmon_testing.containers import docker

pytestmark = pytest.mark.docker

BUCKET = "earthmon-test"


def _upload_dir(s3, root: Path, prefix: str) -> int:
    n = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        s3.upload_file(str(path), BUCKET, f"{prefix}{path.relative_to(root).as_posix()}")
        n += 1
    return n


def test_training_job_in_sdk_local_mode(training_image: str, compose, aws: str, tmp_path: Path) -> None:
    import boto3
    from click.testing import CliRunner

    from launcher.cli import cli

    data = tmp_path / "data"
    data.mkdir()
    docker(
        "run", "--rm", "-v", f"{data}:/data", training_image, "sh", "-c",
        "segmentation-trainer generate-sn6 --dst /data/sn6 --locations 2 --strips 2 --tiles-per-side 2 "
        "--tile-size 64 --buildings 10 && segmentation-trainer prepare-sn6 --src /data/sn6 --dst /data/prepared --format jpg",
    )  # fmt: skip
    s3 = boto3.client("s3")
    channels = ("train", "train_annotation", "validation", "validation_annotation", "label_map")
    for c in channels:
        _upload_dir(s3, data / "prepared" / c, f"sn6/{c}/")
    n_train = len(list((data / "prepared" / "train").glob("*.jpg")))
    hps = {"num_classes": 2, "num_training_samples": n_train, "backbone": "tiny", "use_pretrained_model": "False",
           "crop_size": 48, "base_size": 64, "epochs": 1, "mini_batch_size": 4, "validation_mini_batch_size": 4}  # fmt: skip
    args = ["train", "--local", "--image", training_image, "--role", "arn:aws:iam::000000000000:role/local",
            "--channels", f"s3://{BUCKET}/sn6/", "--output", f"s3://{BUCKET}/sn6-output/", "--name", "ctr-local"]  # fmt: skip
    for k, v in hps.items():
        args += ["--hp", f"{k}={v}"]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output[-4000:]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="sn6-output/").get("Contents", [])]
    model_keys = [k for k in keys if k.endswith("model.tar.gz")]
    assert model_keys, keys
    body = s3.get_object(Bucket=BUCKET, Key=model_keys[0])["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"hyperparams.json", "model_algo-1"} <= names, names
    left = set(docker("ps", "-aq").stdout.split()) - compose
    assert not left, f"train --local left its job containers behind: {left}"


def test_user_script_in_sdk_local_mode(training_image: str, compose, aws: str, tmp_path: Path) -> None:
    """Script mode through the SDK's own Estimator (entry_point + source_dir, image_uri = the training image): the
    toolkit in the image runs the script with its channel and hyperparameters; the model lands in S3."""
    import boto3
    from sagemaker.estimator import Estimator
    from sagemaker.inputs import TrainingInput
    from sagemaker.local import LocalSession

    s3 = boto3.client("s3")
    s3.put_object(Bucket=BUCKET, Key="script/train/tile.txt", Body=b"x")
    src = tmp_path / "src"
    src.mkdir()
    (src / "fit.py").write_text(
        "import argparse, json, os\n"
        "import mxnet, rasterio, segmentation_trainer.contract\n"
        "p = argparse.ArgumentParser(); p.add_argument('--epochs', type=int); a = p.parse_args()\n"
        "names = sorted(os.listdir(os.environ['SM_CHANNEL_TRAIN']))\n"
        "json.dump({'epochs': a.epochs, 'train': names}, open(os.path.join(os.environ['SM_MODEL_DIR'], 'report.json'), 'w'))\n"
    )
    session = LocalSession(
        boto_session=boto3.Session(),
        s3_endpoint_url=aws,
        sagemaker_config={
            "SchemaVersion": "1.0",
            "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
        },
    )
    scratch = tmp_path / "local-mode"
    scratch.mkdir()
    session.config = {"local": {"local_code": True, "container_root": str(scratch)}}
    estimator = Estimator(
        image_uri=training_image,
        entry_point="fit.py",
        source_dir=str(src),
        role="arn:aws:iam::000000000000:role/local",
        instance_count=1,
        instance_type="local",
        sagemaker_session=session,
        hyperparameters={"epochs": 2},
        output_path=f"s3://{BUCKET}/script-output/",
    )
    estimator.fit({"train": TrainingInput(f"s3://{BUCKET}/script/train/")}, wait=True, logs=False)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="script-output/").get("Contents", [])]
    model_keys = [k for k in keys if k.endswith("model.tar.gz")]
    assert model_keys, keys
    body = s3.get_object(Bucket=BUCKET, Key=model_keys[0])["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        report = json.loads(tar.extractfile("report.json").read())
    assert report == {"epochs": 2, "train": ["tile.txt"]}


def test_processing_job_in_sdk_local_mode(processing_image: str, compose, aws: str, tmp_path: Path) -> None:
    """The supported profile, with the SDK's own Processor: scenes (items with relative hrefs beside their
    COGs) under an S3 prefix, downloaded by local mode, NDVI uploaded at the end of the job."""
    import boto3
    from sagemaker.local import LocalSession
    from sagemaker.processing import ProcessingInput, ProcessingOutput, Processor

    from ndvi_worker import synthetic

    scenes = tmp_path / "scenes"
    ids = ["S2B_31UFU_20231204_0_L2A", "S2A_32ULC_20231205_0_L2A"]
    for seed, item_id in enumerate(ids):
        synthetic.write_scene(scenes / item_id, item_id=item_id, size=256, seed=seed)
    s3 = boto3.client("s3")
    _upload_dir(s3, scenes, "sdk/input/")
    session = LocalSession(
        boto_session=boto3.Session(),
        s3_endpoint_url=aws,
        sagemaker_config={
            "SchemaVersion": "1.0",
            "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
        },
    )
    scratch = (
        tmp_path / "local-mode"
    )  # local mode's downloads go here, not to /tmp (the compose fixture checks)
    scratch.mkdir()
    session.config = {"local": {"local_code": True, "container_root": str(scratch)}}
    processor = Processor(
        role="arn:aws:iam::000000000000:role/local",
        image_uri=processing_image,
        instance_count=1,
        instance_type="local",
        sagemaker_session=session,
        env={"GDAL_NUM_THREADS": "1"},
    )
    processor.run(
        inputs=[
            ProcessingInput(
                source=f"s3://{BUCKET}/sdk/input/",
                destination="/opt/ml/processing/input",
                s3_data_type="S3Prefix",
                s3_data_distribution_type="FullyReplicated",
            )
        ],
        outputs=[
            ProcessingOutput(
                source="/opt/ml/processing/output",
                destination=f"s3://{BUCKET}/sdk/output/",
                s3_upload_mode="EndOfJob",
            )
        ],
        wait=True,
        logs=False,
    )
    desc = processor.jobs[-1].describe()
    assert desc["ProcessingJobStatus"] == "Completed", desc
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="sdk/output/").get("Contents", [])}
    for item_id in ids:
        assert {f"sdk/output/{item_id}_ndvi.tif", f"sdk/output/{item_id}_ndvi.json"} <= keys, keys
    reports = [k for k in keys if "/_reports/" in k]
    assert len(reports) == 1
    report = json.loads(s3.get_object(Bucket=BUCKET, Key=reports[0])["Body"].read())
    assert report["summary"]["total"] == 2 and {s["status"] for s in report["scenes"]} == {"done"}


def test_launcher_local_sdk_local_runs_a_plan(
    processing_image: str, compose, aws: str, range_server, tmp_path: Path
) -> None:
    """`launcher local --sdk-local` end to end: a plan's items (hrefs on an HTTP server the local-mode container
    reaches, as real items point at the sentinel-cogs bucket) staged under one S3 prefix, the job run by the SDK's
    local mode, NDVI + report uploaded to the plan's output prefix; the scene whose COG is missing fails alone."""
    import boto3
    from click.testing import CliRunner

    from launcher.cli import cli
    from launcher.ndvi.store import load_plan
    from ndvi_worker import synthetic

    scenes = tmp_path / "scenes"
    ids = ["S2B_31UFU_20231204_0_L2A", "S2A_32ULC_20231205_0_L2A", "S2B_31UGU_20231204_0_L2A"]
    base_url = range_server(str(scenes))
    items = []
    for seed, item_id in enumerate(ids):
        path = Path(synthetic.write_scene(scenes / item_id, item_id=item_id, size=256, seed=seed).item_path)
        item = json.loads(path.read_text())
        for asset in item["assets"].values():
            asset["href"] = f"{base_url}/{item_id}/{asset['href'].removeprefix('./')}"
        items.append(item)
    bad = ids[-1]
    items[-1]["assets"]["nir"]["href"] = f"{base_url}/{bad}/missing-B08.tif"  # a 404: fails alone
    items_path = tmp_path / "items.jsonl"
    items_path.write_text("".join(json.dumps(i) + "\n" for i in items))
    run = tmp_path / "run"

    def launcher(*args: str):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    r = launcher("plan", "--items", str(items_path), "--jobs", "1", "--instances-per-job", "1",
                 "--s3-prefix", f"s3://{BUCKET}/ndvi", "--run-id", "sdk", "--out", str(run))  # fmt: skip
    assert r.exit_code == 0, r.output
    r = launcher("local", "--plan", str(run), "--sdk-local", "--image", processing_image,
                 "--env", "GDAL_NUM_THREADS=1")  # fmt: skip
    job = load_plan(run).jobs[0]
    s3 = boto3.client("s3")
    staged = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"ndvi/sdk/sdk-local/{job.name}/").get("Contents", [])
    # the items were copied in one batch (JSON Lines, one job x one instance): staged under its own name
    assert [o["Key"].rsplit("/", 1)[-1] for o in staged] == ["r0-000-0000.jsonl"]
    batch = s3.get_object(Bucket=BUCKET, Key=staged[0]["Key"])["Body"].read().decode()
    assert sorted(json.loads(line)["id"] for line in batch.splitlines()) == sorted(ids)
    out_prefix = f"ndvi/sdk/output/{job.name}/"
    keys = {
        o["Key"][len(out_prefix) :]
        for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=out_prefix).get("Contents", [])
    }
    for item_id in ids[:-1]:
        assert {f"{item_id}_ndvi.tif", f"{item_id}_ndvi.json"} <= keys, (keys, r.output[-3000:])
    assert not [k for k in keys if k.startswith(bad)]
    reports = [k for k in keys if k.startswith("_reports/")]
    assert len(reports) == 1, (keys, r.output[-3000:])
    report = json.loads(s3.get_object(Bucket=BUCKET, Key=out_prefix + reports[0])["Body"].read())
    status = {s["item_id"]: s["status"] for s in report["scenes"]}
    assert status == {ids[0]: "done", ids[1]: "done", bad: "failed"}, report
    assert "404" in json.dumps([s for s in report["scenes"] if s["item_id"] == bad])
    # the worker exits 1 for a failed scene, so the job fails as on SageMaker, and the launcher says so
    assert r.exit_code == 1, r.output[-3000:]
    assert f"{job.name}: Failed" in r.output and "0/1 job(s) completed" in r.output
    left = set(docker("ps", "-aq").stdout.split()) - compose
    assert not left, f"local --sdk-local left its job containers behind: {left}"
