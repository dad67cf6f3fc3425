"""The command line: instant --help without MXNet, generate-sn6 and prepare-sn6 through the CLI."""

from __future__ import annotations

import json
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
    assert "num_classes is required" in (tmp_path / "output" / "failure").read_text()
