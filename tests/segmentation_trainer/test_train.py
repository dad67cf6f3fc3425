"""Training jobs under the SageMaker contract (a temporary /opt/ml tree): metric lines, artifacts, checkpoints and
resume (also after SIGTERM), failure file, incremental training, JPG input, a real ResNet-50 DeepLabV3."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mxnet")

from earthmon_testing.trainer import TINY_HP, make_job_dir  # noqa: E402
from segmentation_trainer.contract import TrainingPaths  # noqa: E402
from segmentation_trainer.fit import METRIC_DEFINITIONS, EarlyStopping, quality_line, throughput_line  # noqa: E402
from segmentation_trainer.train import RunOptions, run_training  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def metric_values(text: str) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list] = {}
    for d in METRIC_DEFINITIONS:
        rx = re.compile(d["Regex"].replace(r"epoch: \d+", r"epoch: (\d+)"))
        out[d["Name"]] = [(int(m.group(1)), float(m.group(2))) for m in rx.finditer(text)]
    return out


# ----------------------------------------------------------------------------------------------- pure parts
def test_metric_lines_are_the_builtins_byte_for_byte():
    assert (
        quality_line("algo-1", 0, "train loss", 1.4757)
        == "#quality_metric. host: algo-1, epoch: 0, train loss: 1.4757 ."
    )
    assert (
        quality_line("algo-1", 0, "validation pixel_accuracy", 0.8472)
        == "#quality_metric. host: algo-1, epoch: 0, validation pixel_accuracy: 0.8472 ."
    )
    assert (
        quality_line("algo-1", 0, "validation mIOU", 0.5063)
        == "#quality_metric. host: algo-1, epoch: 0, validation mIOU: 0.5063 ."
    )
    assert (
        throughput_line("algo-1", 0, 55.04)
        == "#throughput_metric. host: algo-1, epoch: 0, train throughput: 55.04 samples/sec."
    )
    text = "\n".join(
        [
            quality_line("algo-1", 3, "train loss", 0.25),
            quality_line("algo-1", 3, "validation pixel_accuracy", 0.9),
            quality_line("algo-1", 3, "validation mIOU", 0.61),
            throughput_line("algo-1", 3, 7.5),
        ]
    )
    values = metric_values(text)
    assert values == {
        "train:loss": [(3, 0.25)],
        "validation:pixel_accuracy": [(3, 0.9)],
        "validation:mIOU": [(3, 0.61)],
        "train:throughput": [(3, 7.5)],
    }


def test_early_stopping_rule():
    s = EarlyStopping(True, min_epochs=3, patience=2, tolerance=0.1)
    history = [0.5, 0.52, 0.53, 0.54, 0.9, 0.91, 0.92]
    best, stops = None, []
    for epoch, miou in enumerate(history):
        stops.append(s.update(epoch, miou, best))
        best = miou if best is None or miou > best else best
    # epochs 1-3 improve < 10 %: bad; the stop can come only from epoch 2 (min 3 epochs) with 2 bad in a row
    assert stops == [False, False, True, True, False, False, True]
    assert not EarlyStopping(False, 1, 1, 0.0).update(5, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------- jobs
@pytest.fixture(scope="module")
def tiny_job(sn6_prepared, tmp_path_factory):
    """A 2-epoch tiny DeepLab job on the prepared SN6-like data; returns (paths, stdout)."""
    base = make_job_dir(tmp_path_factory.mktemp("job"), sn6_prepared, TINY_HP)
    proc = subprocess.run(
        [sys.executable, "-m", "segmentation_trainer", "train"],
        env={**os.environ, "SAGEMAKER_BASE_DIR": str(base)},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return TrainingPaths(base), proc.stdout, proc.stderr


def test_job_writes_metric_lines_every_epoch(tiny_job):
    _, stdout, _ = tiny_job
    values = metric_values(stdout)
    for name in ("train:loss", "validation:mIOU", "validation:pixel_accuracy", "train:throughput"):
        assert [e for e, _ in values[name]] == [0, 1], name
    assert all(0 <= v <= 1 for _, v in values["validation:mIOU"])
    assert all(v > 0 for _, v in values["train:throughput"])


def test_job_writes_builtin_compatible_and_exported_artifacts(tiny_job):
    paths, _, stderr = tiny_job
    names = {p.name for p in paths.model_dir.iterdir()}
    assert {
        "hyperparams.json",
        "model_algo-1",
        "model_best.params",
        "model-symbol.json",
        "model-0000.params",
    } <= names
    assert {"model.onnx", "metadata.json"} <= names
    hp = json.loads((paths.model_dir / "hyperparams.json").read_text())
    assert (
        hp["num_classes"] == "2"
        and hp["algorithm"] == "deeplab"
        and all(isinstance(v, str) for v in hp.values())
    )
    md = json.loads((paths.model_dir / "metadata.json").read_text())
    assert md["bands"] == 4 and md["band_names"] == ["HH", "HV", "VH", "VV"]
    assert md["class_names"] == ["background", "building"]  # from label_map/class_names.json
    assert md["crop_size"] == 48 and md["nodata"] == 0.0 and md["input_format"] == "geotiff"
    assert len(md["mean"]) == 4 and all(s > 0 for s in md["std"])
    assert md["metrics"]["epochs_completed"] == 2 and len(md["metrics"]["history"]) == 2
    assert md["onnx"]["input_shape"] == ["N", 4, 48, 48]
    assert not paths.failure_file.exists()
    assert (paths.output_data_dir / "training_history.json").is_file()
    assert {p.name for p in paths.checkpoint_dir.iterdir()} >= {"last.params", "trainer.states", "state.json"}
    assert "training on CPU" in stderr


def test_evaluate_command_on_the_trained_model(tiny_job, sn6_prepared):
    paths, _, _ = tiny_job
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "segmentation_trainer",
            "evaluate",
            "--model",
            str(paths.model_dir),
            "--data",
            str(sn6_prepared),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["images"] > 0 and 0 <= result["mIOU"] <= 1 and 0 <= result["pixel_accuracy"] <= 1
    sp = result["spacenet"]
    assert sp["ground_truth"] == "buildings.json" and sp["building_class"] == 1
    assert sp["true_positives"] + sp["false_negatives"] > 0
    assert set(result["iou_per_class"]) == {"background", "building"}


def test_resume_after_a_restart(sn6_prepared, make_job, tmp_path, capfd, caplog):
    caplog.set_level("INFO")
    base = make_job(tmp_path, sn6_prepared, {**TINY_HP, "epochs": "2"})
    paths = TrainingPaths(base)
    options = RunOptions(onnx=False, workers=1, install_signal_handler=False)
    assert run_training(paths, options) == 0
    first = metric_values(capfd.readouterr().out)
    assert [e for e, _ in first["train:loss"]] == [0, 1]
    # the job restarts (spot) with the checkpoints synced back, and more epochs
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps({**TINY_HP, "epochs": "3"}))
    assert run_training(paths, options) == 0
    out = capfd.readouterr().out
    assert [e for e, _ in metric_values(out)["train:loss"]] == [2]
    assert "resumed from checkpoint: epoch 1 done" in caplog.text
    state = json.loads((paths.checkpoint_dir / "state.json").read_text())
    assert state["epoch"] == 2 and [h["epoch"] for h in state["history"]] == [0, 1, 2]
    # a checkpoint of another network is not resumed
    (base / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({**TINY_HP, "epochs": "1", "algorithm": "fcn"})
    )
    assert run_training(paths, options) == 0
    out = capfd.readouterr().out
    assert [e for e, _ in metric_values(out)["train:loss"]] == [0]
    assert "is for another network or dataset" in caplog.text


def test_sigterm_writes_the_model_and_the_next_run_resumes(sn6_prepared, make_job, tmp_path):
    base = make_job(tmp_path, sn6_prepared, {**TINY_HP, "epochs": "200"})
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "segmentation_trainer", "train"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 300
        for line in proc.stdout:
            if "#throughput_metric" in line and "epoch: 1," in line:
                break
            assert time.monotonic() < deadline
        proc.send_signal(signal.SIGTERM)
        rest = proc.stdout.read()
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    paths = TrainingPaths(base)
    md = json.loads((paths.model_dir / "metadata.json").read_text())
    assert md["metrics"]["interrupted"] is True
    assert (paths.model_dir / "model_algo-1").is_file() and not paths.failure_file.exists()
    done = json.loads((paths.checkpoint_dir / "state.json").read_text())["epoch"]
    assert done >= 1
    assert f"epoch: {done + 2}," not in rest  # stopped within the next epoch
    # the restarted job continues after the last completed epoch
    (base / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({**TINY_HP, "epochs": str(done + 2)})
    )
    assert run_training(paths, RunOptions(onnx=False, install_signal_handler=False)) == 0
    state = json.loads((paths.checkpoint_dir / "state.json").read_text())
    assert [h["epoch"] for h in state["history"]] == list(range(done + 2))


def _failure(base: Path) -> str:
    return (base / "output" / "failure").read_text()


@pytest.mark.parametrize(
    "hp_update,expected",
    [
        (
            {"learning_rat": "0.1"},
            "ClientError: invalid hyperparameters: unknown hyperparameter 'learning_rat'",
        ),
        ({"num_classes": "1"}, "num_classes='1': must be >= 2"),
        (
            {"use_pretrained_model": "True", "backbone": "resnet-101"},
            "use_pretrained_model=True but no backbone weights",
        ),
        ({"use_pretrained_model": "True"}, "backbone=tiny has no pretrained weights"),
        ({"precision_dtype": "float16"}, "precision_dtype=float16 needs a GPU"),
    ],
)
def test_failure_file_on_bad_hyperparameters(sn6_prepared, make_job, tmp_path, hp_update, expected):
    base = make_job(tmp_path, sn6_prepared, {**TINY_HP, **hp_update}, channels=("train", "train_annotation"))
    assert run_training(TrainingPaths(base), RunOptions(install_signal_handler=False)) == 2
    assert expected in _failure(base)
    assert len(_failure(base)) <= 1024


def test_failure_file_on_bad_data(sn6_prepared, make_job, tmp_path):
    base = make_job(tmp_path, sn6_prepared, TINY_HP, channels=("train", "train_annotation"))
    victim = sorted((base / "input" / "data" / "train").iterdir())[0]
    victim.write_bytes(b"garbage")
    assert run_training(TrainingPaths(base), RunOptions(install_signal_handler=False)) == 2
    assert _failure(base).startswith("ClientError: cannot read image") and victim.name in _failure(base)

    base2 = make_job(tmp_path / "b", sn6_prepared, TINY_HP, channels=("train",))
    assert run_training(TrainingPaths(base2), RunOptions(install_signal_handler=False)) == 2
    assert "annotation channel not found" in _failure(base2)

    base3 = make_job(tmp_path / "c", sn6_prepared, TINY_HP, channels=("train", "train_annotation"))
    (base3 / "input" / "config" / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1", "algo-2"]})
    )
    assert run_training(TrainingPaths(base3), RunOptions(install_signal_handler=False)) == 2
    assert "set InstanceCount=1" in _failure(base3)

    base4 = make_job(tmp_path / "d", sn6_prepared, None, channels=("train", "train_annotation"))
    (base4 / "input" / "config" / "hyperparameters.json").write_text("{not json")
    assert run_training(TrainingPaths(base4), RunOptions(install_signal_handler=False)) == 2
    assert "hyperparameters.json is not valid JSON" in _failure(base4)


def test_incremental_training_from_a_model_channel(tiny_job, sn6_prepared, make_job, tmp_path, caplog):
    caplog.set_level("INFO")
    paths, _, _ = tiny_job
    base = make_job(
        tmp_path, sn6_prepared, {**TINY_HP, "epochs": "1"}, channels=("train", "train_annotation", "model")
    )
    channel = base / "input" / "data" / "model"
    channel.mkdir(parents=True)
    with tarfile.open(channel / "model.tar.gz", "w:gz") as tar:
        for p in paths.model_dir.iterdir():
            tar.add(p, arcname=p.name)
    assert run_training(TrainingPaths(base), RunOptions(onnx=False, install_signal_handler=False)) == 0
    assert "incremental training from the model channel" in caplog.text
    old = json.loads((paths.model_dir / "metadata.json").read_text())
    new = json.loads((base / "model" / "metadata.json").read_text())
    assert new["mean"] == old["mean"] and new["std"] == old["std"]
    # a model for another number of classes is refused
    base2 = make_job(
        tmp_path / "b", sn6_prepared, {**TINY_HP, "num_classes": "3"}, channels=("train", "train_annotation")
    )
    (base2 / "input" / "data" / "model").symlink_to(channel)
    assert run_training(TrainingPaths(base2), RunOptions(install_signal_handler=False)) == 2
    assert "holds a deeplab/tiny network for 2 classes" in _failure(base2)


def test_builtin_jpg_input(sn6_prepared_jpg, make_job, tmp_path):
    base = make_job(tmp_path, sn6_prepared_jpg, {**TINY_HP, "epochs": "1"})
    assert run_training(TrainingPaths(base), RunOptions(onnx=False, install_signal_handler=False)) == 0
    md = json.loads((base / "model" / "metadata.json").read_text())
    assert md["bands"] == 3 and md["input_format"] == "jpg" and md["nodata"] is None
    assert 20 < md["mean"][0] < 235  # statistics of 8-bit pixels


def test_real_resnet50_deeplab_with_a_pretrained_channel(sn6_prepared, make_job, tmp_path, capfd, caplog):
    """DeepLabV3 on ResNet-50 (the image's default network), a few iterations on tiny crops."""
    caplog.set_level("INFO")
    import mxnet as mx
    import onnxruntime as ort
    from gluoncv.model_zoo.resnetv1b import resnet50_v1s

    hp = {
        **TINY_HP,
        "backbone": "resnet-50",
        "use_pretrained_model": "True",
        "crop_size": "32",
        "base_size": "48",
        "mini_batch_size": "2",
        "epochs": "1",
        "optimizer": "adam",
        "lr_scheduler": "cosine",
    }
    base = make_job(tmp_path, sn6_prepared, hp)
    pretrained = base / "input" / "data" / "pretrained"
    pretrained.mkdir(parents=True)
    clf = resnet50_v1s(pretrained=False)
    clf.initialize(mx.init.Xavier())
    clf(mx.nd.zeros((1, 3, 32, 32)))
    clf.save_parameters(str(pretrained / "resnet50_v1s-25a187fa.params"))
    (base / "input" / "config" / "inputdataconfig.json").write_text(
        json.dumps(
            {
                c: {"TrainingInputMode": "File"}
                for c in ("train", "train_annotation", "validation", "validation_annotation", "pretrained")
            }
        )
    )
    code = run_training(
        TrainingPaths(base), RunOptions(max_batches_per_epoch=3, install_signal_handler=False)
    )
    out = capfd.readouterr().out
    assert code == 0, caplog.text[-3000:]
    assert "backbone weights: " in caplog.text and "resnet50_v1s-25a187fa.params" in caplog.text
    assert [e for e, _ in metric_values(out)["validation:mIOU"]] == [0]
    from segmentation_trainer.export import load_model

    net, md = load_model(base / "model")
    assert md["backbone"] == "resnet-50" and md["algorithm"] == "deeplab"
    x = np.random.default_rng(0).normal(size=(1, 4, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(base / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"data": x})
    assert np.abs(got - net(mx.nd.array(x))[0].asnumpy()).max() < 1e-3
