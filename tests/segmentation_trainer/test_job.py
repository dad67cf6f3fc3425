"""`train`'s two modes: the contract read through the SageMaker training toolkit, the built-in algorithm when no
program is named, a user's script run by the toolkit when one is (script mode)."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import textwrap
import tomllib
from pathlib import Path

import pytest

from earthmon_testing.trainer import TINY_HP, make_job_dir
from segmentation_trainer import job as job_module
from segmentation_trainer.contract import TrainingPaths
from segmentation_trainer.job import run_job
from segmentation_trainer.script_mode import check_program
from segmentation_trainer.toolkit import environment_module, read_job

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import rasterio, segmentation_trainer.contract  # the image's packages are importable
    report = {
        "argv": sys.argv[1:],
        "hps": json.loads(os.environ["SM_HPS"]),
        "train": os.environ.get("SM_CHANNEL_TRAIN"),
        "channels": json.loads(os.environ["SM_CHANNELS"]),
        "model_dir": os.environ["SM_MODEL_DIR"],
        "num_gpus": os.environ["SM_NUM_GPUS"],
        "cwd": os.getcwd(),
    }
    with open(os.path.join(os.environ["SM_MODEL_DIR"], "report.json"), "w") as f:
        json.dump(report, f)
    """
)
FAILING = textwrap.dedent(
    """
    import sys
    print("epoch 0 done")
    print("ValueError: the labels do not match the classes", file=sys.stderr)
    sys.exit(3)
    """
)


@pytest.fixture(autouse=True)
def _environment():
    """The toolkit writes SM_* and SAGEMAKER_* variables into the process environment: restore it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _job(base: Path, hps: dict, channels=("train",), code: dict[str, str] | None = None) -> TrainingPaths:
    make_job_dir(base, None, hps, channels=channels)
    for c in channels:
        (base / "input" / "data" / c).mkdir(parents=True, exist_ok=True)
    (base / "input" / "data" / "train" / "a.txt").write_text("x")
    for name, text in (code or {}).items():
        (base / "input" / "data" / "code" / name).parent.mkdir(parents=True, exist_ok=True)
        (base / "input" / "data" / "code" / name).write_text(text)
    for sub in ("model", "output"):
        (base / sub).mkdir(exist_ok=True)
    return TrainingPaths(base)


def _tarball(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_no_program_runs_the_builtin_algorithm(tmp_path, monkeypatch):
    seen = {}

    def fake_training(paths, job=None):
        seen["job"] = job
        return 0

    monkeypatch.setattr("segmentation_trainer.train.run_training", fake_training)
    paths = _job(tmp_path, {**TINY_HP, "epochs": "2"}, channels=("train", "validation"))
    assert run_job(paths) == 0
    job = seen["job"]
    assert job.program is None
    assert job.hyperparameters["epochs"] == "2" and job.hyperparameters["backbone"] == TINY_HP["backbone"]
    assert job.channel_dirs == {c: paths.channel(c) for c in ("train", "validation")}
    assert (job.current_host, job.hosts, job.model_dir) == ("algo-1", ("algo-1",), paths.model_dir)


def test_the_toolkit_reads_the_contract(tmp_path):
    """Values JSON-decoded by the toolkit come back as the built-in's strings; sagemaker_* are split off; each
    base directory gets the toolkit's paths; SAGEMAKER_BASE_DIR is left as it was."""
    before = os.environ.get("SAGEMAKER_BASE_DIR")
    hps = {"epochs": "3", "learning_rate": "0.001", "use_pretrained_model": "False", "class_names": '["a","b"]',
           "sagemaker_program": '"train.py"', "sagemaker_region": '"eu-west-1"'}  # fmt: skip
    one = read_job(_job(tmp_path / "one", hps))
    assert one.hyperparameters == {"epochs": "3", "learning_rate": "0.001", "use_pretrained_model": "False",
                                   "class_names": '["a","b"]'}  # fmt: skip
    assert one.program == "train.py" and one.sagemaker_hyperparameters["sagemaker_region"] == "eu-west-1"
    two = read_job(_job(tmp_path / "two", {"epochs": "1"}))
    assert two.model_dir == tmp_path / "two" / "model" and two.output_dir == tmp_path / "two" / "output"
    assert environment_module(two.paths).code_dir == str(tmp_path / "two" / "code")
    assert os.environ.get("SAGEMAKER_BASE_DIR") == before


def test_a_tree_without_the_optional_config_files(tmp_path):
    """A hand-made local tree (hyperparameters.json only): one host algo-1, the channel folders present."""
    (tmp_path / "input" / "config").mkdir(parents=True)
    (tmp_path / "input" / "config" / "hyperparameters.json").write_text("{}")
    (tmp_path / "input" / "data" / "train").mkdir(parents=True)
    job = read_job(TrainingPaths(tmp_path))
    assert job.hosts == ("algo-1",) and list(job.channel_dirs) == ["train"] and job.hyperparameters == {}


@pytest.mark.parametrize(
    "delivery", ["code channel", "code channel tarball", "submit dir", "file:// tarball"]
)
def test_program_runs_the_user_script_with_sm_variables_and_arguments(tmp_path, delivery):
    hps = {"epochs": "3", "lr": "0.01", "sagemaker_program": "train.py"}
    files = {"train.py": SCRIPT, "helper/__init__.py": ""}
    if delivery == "code channel":
        paths = _job(tmp_path / "job", hps, channels=("train", "code"), code=files)
    elif delivery == "code channel tarball":
        paths = _job(tmp_path / "job", hps, channels=("train", "code"))
        (paths.channel("code") / "sourcedir.tar.gz").write_bytes(_tarball(files))
    elif delivery == "submit dir":
        src = tmp_path / "src"
        for name, text in files.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_text(text)
        paths = _job(tmp_path / "job", {**hps, "sagemaker_submit_directory": str(src)})
    else:
        (tmp_path / "sourcedir.tar.gz").write_bytes(_tarball(files))
        paths = _job(
            tmp_path / "job", {**hps, "sagemaker_submit_directory": f"file://{tmp_path / 'sourcedir.tar.gz'}"}
        )
    assert run_job(paths) == 0
    report = json.loads((paths.model_dir / "report.json").read_text())
    assert report["argv"] == ["--epochs", "3", "--lr", "0.01"]
    assert report["hps"] == {"epochs": 3, "lr": 0.01}
    assert report["train"] == str(paths.channel("train")) and "train" in report["channels"]
    assert report["model_dir"] == str(paths.model_dir) and report["cwd"] == str(paths.base / "code")
    assert (paths.output_dir / "success").exists() and not paths.failure_file.exists()


def test_sagemaker_program_from_the_environment(tmp_path, monkeypatch):
    paths = _job(tmp_path, {"epochs": "1"}, channels=("train", "code"), code={"fit.py": SCRIPT})
    monkeypatch.setenv("SAGEMAKER_PROGRAM", "fit.py")
    assert run_job(paths) == 0
    assert json.loads((paths.model_dir / "report.json").read_text())["argv"] == ["--epochs", "1"]


def test_a_failing_script_gives_its_exit_code_and_the_failure_file(tmp_path):
    paths = _job(
        tmp_path, {"sagemaker_program": "train.py"}, channels=("train", "code"), code={"train.py": FAILING}
    )
    assert run_job(paths) == 3
    failure = paths.failure_file.read_text()
    assert "ExitCode 3" in failure and "ValueError: the labels do not match the classes" in failure
    assert not (paths.output_dir / "success").exists()


@pytest.mark.parametrize(
    "program",
    [
        "../x.py",
        "/etc/passwd",
        "-c",
        "a/../../b.py",
        "./train.py",
        "train.py; rm -rf /",
        "a//b.py",
        "x\ny.py",
    ],
)
def test_hostile_program_names_are_refused_in_one_line(tmp_path, program):
    paths = _job(
        tmp_path, {"sagemaker_program": program}, channels=("train", "code"), code={"train.py": SCRIPT}
    )
    assert run_job(paths) == 2
    failure = paths.failure_file.read_text()
    assert failure.startswith("ClientError: sagemaker_program=") and "\n" not in failure
    assert not (paths.model_dir / "report.json").exists()
    with pytest.raises(ValueError):
        check_program(program)


def test_a_missing_script_or_code_is_one_line(tmp_path):
    paths = _job(
        tmp_path / "a", {"sagemaker_program": "train.py"}, channels=("train", "code"), code={"other.py": ""}
    )
    assert run_job(paths) == 2
    assert "sagemaker_program=train.py is not in the submitted code" in paths.failure_file.read_text()
    paths = _job(tmp_path / "b", {"sagemaker_program": "train.py"})
    assert run_job(paths) == 2
    assert "no code was given" in paths.failure_file.read_text()


def test_script_mode_accepts_the_code_channel_and_the_scripts_own_channels(tmp_path):
    paths = _job(tmp_path, {"sagemaker_program": "train.py"}, channels=("train", "code", "sn6-tiles"),
                 code={"train.py": SCRIPT})  # fmt: skip
    assert run_job(paths) == 0
    assert json.loads((paths.model_dir / "report.json").read_text())["channels"] == [
        "code",
        "sn6-tiles",
        "train",
    ]


def test_a_code_channel_without_a_program_is_refused_by_the_builtin(tmp_path):
    paths = _job(tmp_path, {**TINY_HP}, channels=("train", "code"), code={"train.py": SCRIPT})
    assert run_job(paths) == 2
    assert "names no script" in paths.failure_file.read_text()


def test_a_missing_base_dir_creates_nothing(tmp_path):
    paths = TrainingPaths(tmp_path / "nope")
    assert run_job(paths) == 2
    assert not (tmp_path / "nope").exists()
    assert job_module.run_job is run_job


def test_the_image_distribution_has_only_the_trainer_and_its_commands():
    image = tomllib.loads((ROOT / "containers/training/pyproject.toml").read_text())
    repo = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert image["project"]["version"] == repo["project"]["version"]
    assert image["tool"]["setuptools"]["packages"]["find"]["include"] == ["segmentation_trainer*"]
    scripts = image["project"]["scripts"]
    assert set(scripts) == {"segmentation-trainer", "train", "serve"}
    assert scripts["segmentation-trainer"] == repo["project"]["scripts"]["segmentation-trainer"]
    assert sys.version_info[:2] == (3, 11)
