"""Hyperparameters: the built-in algorithm's names, defaults and ranges; unknown keys rejected."""

from __future__ import annotations

import pytest

from segmentation_trainer.hyperparameters import HyperparameterError, Hyperparameters, parse_hyperparameters

REQUIRED = {"num_classes": "2", "num_training_samples": "100"}

BUILTIN_DEFAULTS = {
    "backbone": "resnet-50",
    "use_pretrained_model": True,
    "base_size": 520,
    "crop_size": 240,
    "epochs": 10,
    "learning_rate": 0.001,
    "optimizer": "sgd",
    "lr_scheduler": "poly",
    "lr_scheduler_factor": 0.1,
    "lr_scheduler_step": (10, 20),
    "mini_batch_size": 16,
    "validation_mini_batch_size": 16,
    "momentum": 0.9,
    "weight_decay": 0.0001,
    "gamma1": 0.9,
    "gamma2": 0.9,
    "early_stopping": False,
    "early_stopping_min_epochs": 5,
    "early_stopping_patience": 4,
    "early_stopping_tolerance": 0.0,
    "syncbn": False,
    "precision_dtype": "float32",
}


def test_defaults_are_the_builtin_ones_except_the_algorithm():
    hp = parse_hyperparameters(REQUIRED)
    for key, value in BUILTIN_DEFAULTS.items():
        assert getattr(hp, key) == value, key
    assert hp.algorithm == "deeplab"  # this image's default (the built-in defaults to fcn)
    assert (hp.num_classes, hp.num_training_samples) == (2, 100)


def test_string_values_as_sagemaker_writes_them():
    hp = parse_hyperparameters(
        {
            **REQUIRED,
            "algorithm": "PSP",
            "backbone": "resnet-101",
            "use_pretrained_model": "false",
            "early_stopping": "True",
            "learning_rate": "1e-2",
            "epochs": "30.0",
            "lr_scheduler": "step",
            "lr_scheduler_step": "5,15,25",
            "optimizer": "rmsprop",
            "class_names": "background, building",
        }
    )
    assert hp.algorithm == "psp" and hp.backbone == "resnet-101"
    assert hp.use_pretrained_model is False and hp.early_stopping is True
    assert hp.learning_rate == 0.01 and hp.epochs == 30
    assert hp.lr_scheduler_step == (5, 15, 25)
    assert hp.class_names == ("background", "building")


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("num_classes", "1", "num_classes='1': must be >= 2"),
        ("num_classes", "255", "must be <= 254"),
        ("num_classes", "2.5", "expected an integer"),
        ("num_training_samples", "0", "must be >= 1"),
        ("backbone", "resnet-18", "must be one of resnet-50, resnet-101"),
        ("algorithm", "unet", "must be one of fcn, psp, deeplab"),
        ("optimizer", "lamb", "must be one of sgd, adam, adagrad, nag, rmsprop"),
        ("lr_scheduler", "linear", "must be one of poly, cosine, step"),
        ("learning_rate", "0", "must be > 0"),
        ("learning_rate", "1.5", "must be <= 1"),
        ("learning_rate", "fast", "expected a number"),
        ("learning_rate", "nan", "finite"),
        ("momentum", "-0.1", "must be >= 0"),
        ("crop_size", "16", "must be >= 17"),
        ("base_size", "8", "must be >= 17"),
        ("mini_batch_size", "0", "must be >= 1"),
        ("early_stopping", "maybe", "expected True or False"),
        ("early_stopping_tolerance", "2", "must be <= 1"),
        ("lr_scheduler_step", "20,10", "increasing"),
        ("lr_scheduler_step", "a,b", "comma-separated"),
        ("precision_dtype", "bfloat16", "must be one of float32, float16"),
        ("gamma1", "1.1", "must be <= 1"),
    ],
)
def test_bad_values_are_named(key, value, fragment):
    with pytest.raises(HyperparameterError) as err:
        parse_hyperparameters({**REQUIRED, key: value})
    assert fragment in str(err.value)
    assert key in str(err.value)


def test_unknown_keys_rejected_with_a_suggestion_and_all_problems_reported():
    with pytest.raises(HyperparameterError) as err:
        parse_hyperparameters({**REQUIRED, "learning_rat": "0.1", "epochs": "0", "foo": "1"})
    problems = err.value.problems
    assert "unknown hyperparameter 'learning_rat' (did you mean 'learning_rate'?)" in problems
    assert "unknown hyperparameter 'foo'" in problems
    assert any(p.startswith("epochs='0'") for p in problems)


def test_required_keys():
    with pytest.raises(
        HyperparameterError, match="num_classes is required; num_training_samples is required"
    ):
        parse_hyperparameters({})


def test_sagemaker_injected_keys_are_ignored():
    hp = parse_hyperparameters(
        {**REQUIRED, "_tuning_objective_metric": "validation:mIOU", "sagemaker_region": "x"}
    )
    assert hp.num_classes == 2


def test_cross_field_checks():
    with pytest.raises(HyperparameterError, match="class_names has 3 names for num_classes=2"):
        parse_hyperparameters({**REQUIRED, "class_names": "a,b,c"})
    # a crop larger than the rescaled image is padded (ignore), as in the built-in: valid
    assert parse_hyperparameters({**REQUIRED, "crop_size": "300", "base_size": "100"}).crop_size == 300


def test_crop_size_rounds_up_to_a_multiple_of_8_and_strings_round_trip():
    hp = parse_hyperparameters({**REQUIRED, "crop_size": "241"})
    assert hp.effective_crop_size == 248
    again = parse_hyperparameters(hp.to_strings())
    assert again == hp
    assert isinstance(again, Hyperparameters)
    assert all(isinstance(v, str) for v in hp.to_strings().values())


def test_not_an_object():
    with pytest.raises(HyperparameterError, match="JSON object"):
        parse_hyperparameters(["num_classes", 2])


@pytest.mark.parametrize(
    "key, value",
    [
        ("crop_size", "100000000000"),
        ("base_size", "9000"),
        ("mini_batch_size", "100000"),
        ("epochs", "1e9"),
        ("num_training_samples", str(10**12)),
        ("seed", str(2**40)),
    ],
)
def test_sizes_beyond_any_instance_are_refused_in_one_line(key, value):
    """Red-team F13: a mistyped size is refused with the key named, not an out-of-memory error inside MXNet."""
    with pytest.raises(HyperparameterError, match=key):
        parse_hyperparameters({**REQUIRED, key: value})


def test_large_integers_are_exact_and_float_spellings_still_accepted():
    hp = parse_hyperparameters({**REQUIRED, "seed": str(2**32 - 1), "epochs": "12.0", "crop_size": "2.4e2"})
    assert (hp.seed, hp.epochs, hp.crop_size) == (2**32 - 1, 12, 240)
    with pytest.raises(HyperparameterError, match="seed"):
        parse_hyperparameters({**REQUIRED, "seed": "9007199254740993.5"})


def test_model_archive_budget_is_checked_before_extracting(tmp_path, monkeypatch):
    """Red-team F13: a small model.tar.gz that would unpack to more than the budget writes nothing."""
    import io
    import tarfile

    from segmentation_trainer import contract

    channel = tmp_path / "model"
    channel.mkdir()
    with tarfile.open(channel / "model.tar.gz", "w:gz") as tar:
        for i in range(3):
            data = b"\0" * 4096
            info = tarfile.TarInfo(f"part-{i}.params")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setattr(contract, "MODEL_ARCHIVE_MAX_BYTES", 8192)
    dest = tmp_path / "extracted"
    with pytest.raises(contract.ContractError, match="unpacks to"):
        contract.extract_model_channel(channel, dest)
    assert not any(dest.iterdir())
    monkeypatch.setattr(contract, "MODEL_ARCHIVE_MAX_BYTES", 2**20)
    monkeypatch.setattr(contract, "MODEL_ARCHIVE_MAX_MEMBERS", 2)
    with pytest.raises(contract.ContractError, match="entries"):
        contract.extract_model_channel(channel, dest)
    monkeypatch.setattr(contract, "MODEL_ARCHIVE_MAX_MEMBERS", 10)
    assert sorted(p.name for p in contract.extract_model_channel(channel, dest).iterdir()) == [
        "part-0.params",
        "part-1.params",
        "part-2.params",
    ]
