"""The training image's contract, seen from the launcher: the metric lines the trainer writes are read by the
MetricDefinitions the launcher sends, both built from segmentation_trainer.contract's formats."""

from __future__ import annotations

import re

import pytest

from launcher.model import requests as mj
from launcher.model.local_mode import estimator_arguments
from segmentation_trainer import contract


@pytest.mark.parametrize("metric", list(contract.METRICS))
@pytest.mark.parametrize("value", [0.0, 0.5063, 1.4757, 55.04, 1234.5])
def test_a_metric_line_is_read_back_by_its_definition(metric, value):
    line = contract.metric_line(metric, "algo-1", 7, value)
    definitions = {d["Name"]: d["Regex"] for d in mj.METRIC_DEFINITIONS}
    matches = {name: re.search(rx, line) for name, rx in definitions.items()}
    assert [name for name, m in matches.items() if m] == [metric]  # this definition only
    assert float(matches[metric].group(1)) == pytest.approx(value, abs=0.005)


def test_the_lines_are_the_builtins_byte_for_byte():
    assert contract.metric_line("train:loss", "algo-1", 0, 1.4757) == (
        "#quality_metric. host: algo-1, epoch: 0, train loss: 1.4757 ."
    )
    assert contract.metric_line("train:throughput", "algo-1", 0, 55.04) == (
        "#throughput_metric. host: algo-1, epoch: 0, train throughput: 55.04 samples/sec."
    )


def test_requests_use_the_contract():
    spec = mj.TrainingSpec(
        image="img",
        role="arn:aws:iam::123456789012:role/r",
        channels=mj.channels_under("s3://b/p/", contract.OPTIONAL_CHANNELS),
        output_path="s3://b/out/",
    )
    request = mj.training_job_request(spec, "job")
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == [
        dict(d) for d in contract.METRIC_DEFINITIONS
    ]
    assert request["CheckpointConfig"]["LocalPath"] == str(
        contract.TrainingPaths.resolve(contract.CONTAINER_BASE).checkpoint_dir
    )
    assert [c["ChannelName"] for c in request["InputDataConfig"]] == list(contract.CHANNELS)
    assert set(contract.OBJECTIVES) <= set(contract.METRICS)
    local = estimator_arguments(spec, "job")
    assert local["estimator"]["metric_definitions"] == [dict(d) for d in contract.METRIC_DEFINITIONS]
