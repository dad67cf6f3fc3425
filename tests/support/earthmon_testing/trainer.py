"""Helpers of the segmentation_trainer tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from earthmon_testing import TINY_TRAINING_HP

TINY_HP = {**TINY_TRAINING_HP, "num_training_samples": "12"}


CHANNELS = ("train", "train_annotation", "validation", "validation_annotation", "label_map")


def make_job_dir(
    base: Path, data: Path | None, hyperparameters: dict | None, channels=CHANNELS, **files
) -> Path:
    """A SageMaker base dir: config files and channels copied from a prepared dataset."""
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    if hyperparameters is not None:
        (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    (config / "inputdataconfig.json").write_text(
        json.dumps(
            {c: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"} for c in channels}
        )
    )
    for c in channels:
        dst = base / "input" / "data" / c
        if data is not None and (data / c).is_dir() and not dst.exists():
            shutil.copytree(data / c, dst)
    for name, content in files.items():
        (config / name).write_text(content)
    return base
