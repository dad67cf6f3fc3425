"""The command line: instant --help without MXNet, generate-sn6 and prepare-sn6 through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "segmentation_trainer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.mark.parametrize("command", ["train", "prepare-sn6", "evaluate", "generate-sn6"])
def test_help(command):
    proc = run(command, "--help")
    assert proc.returncode == 0 and "Usage:" in proc.stdout


def test_help_does_not_import_mxnet():
    code = "import sys; from segmentation_trainer.cli import cli; print(any(m.startswith('mxnet') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_serve_help_is_the_servers():
    proc = run("serve", "--help")
    assert proc.returncode == 0 and "--model-dir" in proc.stdout


def test_generate_then_prepare(tmp_path):
    proc = run(
        "generate-sn6",
        "--dst",
        str(tmp_path / "sn6"),
        "--locations",
        "2",
        "--strips",
        "2",
        "--tile-size",
        "48",
    )
    assert proc.returncode == 0, proc.stderr
    proc = run(
        "prepare-sn6", "--src", str(tmp_path / "sn6"), "--dst", str(tmp_path / "out"), "--val-fraction", "0.3"
    )
    assert proc.returncode == 0, proc.stderr
    assert "training and" in proc.stdout and "class_names=background,building" in proc.stdout
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert report["written"]["validation"] > 0 and not report["failed"]
    proc = run("prepare-sn6", "--src", str(tmp_path / "sn6"), "--dst", str(tmp_path / "x"), "--format", "png")
    assert proc.returncode == 2 and "Invalid value for '--format'" in proc.stderr


def test_train_outside_a_container_reports_the_missing_contract(tmp_path):
    proc = run("train", "--base-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "no hyperparameters.json" in proc.stderr and "num_classes is required" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created


# ----------------------------------------------------------------------------------------------- bad input
def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _job(tmp_path: Path, hyperparameters: str) -> str:
    _write(tmp_path / "job" / "input" / "config" / "hyperparameters.json", hyperparameters)
    return str(tmp_path / "job")


def _broken_model(tmp_path: Path) -> str:
    _write(tmp_path / "model" / "metadata.json", "{not json")
    return str(tmp_path / "model")


def _escaping_model(tmp_path: Path) -> str:
    _write(
        tmp_path / "model" / "metadata.json",
        json.dumps({"num_classes": 2, "algorithm": "deeplab", "backbone": "tiny", "bands": 4, "mean": [0] * 4,
                    "std": [1] * 4, "params_file": "../../../../etc/passwd"}),
    )  # fmt: skip
    return str(tmp_path / "model")


def _empty(tmp_path: Path, name: str = "empty") -> str:
    (tmp_path / name).mkdir(exist_ok=True)
    return str(tmp_path / name)


def _bad_sn6(tmp_path: Path) -> str:
    """An SN6-looking tree whose summary CSV holds invalid WKT."""
    root = tmp_path / "sn6bad"
    tif = root / "SAR-Intensity" / "SN6_SAR-Intensity_20190804111224_20190804111453_tile_1.tif"
    tif.parent.mkdir(parents=True)
    import numpy as np
    import rasterio

    with rasterio.open(tif, "w", driver="GTiff", width=8, height=8, count=4, dtype="float32") as dst:
        dst.write(np.ones((4, 8, 8), np.float32))
    _write(root / "SummaryData" / "SN6_Buildings.csv", "ImageId,PolygonWKT_Pix\nx_tile_1,POLYGON ((0 0, 1\n")
    return str(root)


NOPE = "/nonexistent-earthmon/deeper"
# (id, argv builder, extra environment, exit status, words the output must contain)
BAD_INPUT = [
    ("unknown command", lambda t: ["fly"], {}, 2, "No such command"),
    ("train: missing base dir", lambda t: ["train", "--base-dir", NOPE], {}, 2, "does not exist"),
    ("train: mistyped SAGEMAKER_BASE_DIR", lambda t: ["train"], {"SAGEMAKER_BASE_DIR": "TYPO"}, 2,
     "does not exist"),
    ("train: no hyperparameters.json", lambda t: ["train", "--base-dir", _empty(t)], {}, 2,
     "no hyperparameters.json"),
    ("train: hyperparameters not JSON", lambda t: ["train", "--base-dir", _job(t, "{oops")], {}, 2,
     "not valid JSON"),
    ("train: bad hyperparameter", lambda t: ["train", "--base-dir", _job(t, '{"num_classes": "two"}')], {}, 2,
     "num_classes"),
    ("train: base dir is a file", lambda t: ["train", "--base-dir", _write(t / "f", "x").as_posix()], {}, 2,
     "is a file"),
    ("serve: port not a number", lambda t: ["serve", "--port", "http"], {}, 2, "invalid int value"),
    ("serve: port 0", lambda t: ["serve", "--port", "0", "--model-dir", _empty(t)], {}, 2, "1-65535"),
    ("serve: missing model dir", lambda t: ["serve", "--model-dir", NOPE], {}, 2, "does not exist"),
    ("serve: empty model dir", lambda t: ["serve", "--model-dir", _empty(t)], {}, 2, "is empty"),
    ("serve: bad workers variable", lambda t: ["serve"], {"SAGEMAKER_MODEL_SERVER_WORKERS": "many"}, 2,
     "SAGEMAKER_MODEL_SERVER_WORKERS"),
    ("generate-sn6: tile size 0", lambda t: ["generate-sn6", "--dst", str(t / "g"), "--tile-size", "0"], {}, 2,
     "--tile-size"),
    ("generate-sn6: no locations", lambda t: ["generate-sn6", "--dst", str(t / "g"), "--locations", "0"], {}, 2,
     "--locations"),
    ("generate-sn6: negative strips", lambda t: ["generate-sn6", "--dst", str(t / "g"), "--strips", "-1"], {}, 2,
     "--strips"),
    ("generate-sn6: dst is a file", lambda t: ["generate-sn6", "--dst", _write(t / "f", "x").as_posix()], {}, 2,
     "is a file"),
    ("prepare-sn6: missing src", lambda t: ["prepare-sn6", "--src", NOPE, "--dst", str(t / "o")], {}, 2,
     "does not exist"),
    ("prepare-sn6: no tiles", lambda t: ["prepare-sn6", "--src", _empty(t), "--dst", str(t / "o")], {}, 2,
     "no SAR-Intensity tiles"),
    ("prepare-sn6: val fraction 1.5",
     lambda t: ["prepare-sn6", "--src", _empty(t), "--dst", str(t / "o"), "--val-fraction", "1.5"], {}, 2,
     "--val-fraction"),
    ("prepare-sn6: bad WKT", lambda t: ["prepare-sn6", "--src", _bad_sn6(t), "--dst", str(t / "o")], {}, 2,
     "is not WKT"),
    ("evaluate: missing model", lambda t: ["evaluate", "--model", NOPE, "--data", _empty(t)], {}, 2,
     "does not exist"),
    ("evaluate: not a model", lambda t: ["evaluate", "--model", _empty(t), "--data", _empty(t, "d")], {}, 2,
     "not a model directory"),
    ("evaluate: metadata not JSON",
     lambda t: ["evaluate", "--model", _broken_model(t), "--data", _empty(t, "d")], {}, 2, "not readable JSON"),
    ("evaluate: params_file outside",
     lambda t: ["evaluate", "--model", _escaping_model(t), "--data", _empty(t, "d")], {}, 2,
     "points outside"),
    ("evaluate: split escaping DATA",
     lambda t: ["evaluate", "--model", _empty(t), "--data", _empty(t, "d"), "--split", "../../etc"], {}, 2,
     "not a split name"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "env", "status", "words"), [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT]
)
def test_bad_input_is_one_line_never_a_traceback(tmp_path, monkeypatch, argv, env, status, words):
    monkeypatch.chdir(tmp_path)  # a relative SAGEMAKER_BASE_DIR typo lands here, where we can see it
    proc = subprocess.run(
        [sys.executable, "-m", "segmentation_trainer", *argv(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), "SAGEMAKER_BASE_DIR": str(tmp_path / "opt-ml"), **env},
    )
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    assert proc.returncode == status, output
    assert words in output, output
    assert not (tmp_path / "TYPO").exists() and not (tmp_path / "opt-ml").exists()  # nothing created
    assert not Path(NOPE).parent.exists()


def test_evaluate_a_jpg_model_on_geotiff_data_says_what_to_do(tmp_path, sn6_prepared):
    from segmentation_trainer.export import write_tiny_model_dir

    metadata = write_tiny_model_dir(tmp_path / "model", bands=3, crop_size=32)
    metadata["input_format"] = "jpg"
    (tmp_path / "model" / "metadata.json").write_text(json.dumps(metadata))
    proc = run("evaluate", "--model", str(tmp_path / "model"), "--data", str(sn6_prepared))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output, output
    assert "takes 3 band(s)" in output and "has 4" in output and "prepare-sn6 --format jpg" in output
