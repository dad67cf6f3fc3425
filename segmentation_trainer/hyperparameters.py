"""Typed, validated hyperparameters: the built-in Semantic Segmentation algorithm's, plus a few of this image.

Pure: ``parse_hyperparameters({"num_classes": "2", ...})`` (string values, as SageMaker writes
``hyperparameters.json``; numbers and booleans are accepted too) returns a frozen :class:`Hyperparameters`
or raises :class:`HyperparameterError` naming every bad key or value. Unknown keys are rejected, except the
keys SageMaker itself adds (``_tuning_objective_metric`` in tuning jobs, ``sagemaker_*``), which are ignored.

Names, defaults and ranges follow the built-in algorithm's documentation, with one difference:
``algorithm`` defaults to ``deeplab`` here (the built-in defaults to ``fcn``). Extra keys of this image:
``pretrained_weights`` (path of backbone weights, instead of a ``pretrained`` channel), ``class_names``
(comma-separated), ``seed``, ``aux_loss_weight`` (0.5, as the built-in), and the backbone value ``tiny``
(a small ResNet for CPU demos and tests; it has no pretrained weights: use ``use_pretrained_model=False``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from segmentation_trainer.contract import ALGORITHMS, BACKBONES, LR_SCHEDULERS, OPTIMIZERS

PRECISIONS = ("float32", "float16")
IGNORED_PREFIXES = ("_tuning_objective_metric", "sagemaker_")


class HyperparameterError(ValueError):
    """One or more hyperparameters are invalid; the message lists each problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid hyperparameters: " + "; ".join(problems))


@dataclass(frozen=True)
class Hyperparameters:
    num_classes: int
    num_training_samples: int
    backbone: str = "resnet-50"
    algorithm: str = "deeplab"
    use_pretrained_model: bool = True
    base_size: int = 520
    crop_size: int = 240
    epochs: int = 10
    learning_rate: float = 0.001
    optimizer: str = "sgd"
    lr_scheduler: str = "poly"
    lr_scheduler_factor: float = 0.1
    lr_scheduler_step: tuple[int, ...] = (10, 20)
    mini_batch_size: int = 16
    validation_mini_batch_size: int = 16
    momentum: float = 0.9
    weight_decay: float = 0.0001
    gamma1: float = 0.9
    gamma2: float = 0.9
    early_stopping: bool = False
    early_stopping_min_epochs: int = 5
    early_stopping_patience: int = 4
    early_stopping_tolerance: float = 0.0
    syncbn: bool = False
    precision_dtype: str = "float32"
    # this image's extras
    pretrained_weights: str | None = None
    class_names: tuple[str, ...] | None = None
    seed: int = 0
    aux_loss_weight: float = 0.5
    # performance settings (segmentation_trainer.threads, fit): not written to hyperparams.json when unset
    earthmon_compute_threads: int | None = None
    earthmon_data_workers: int | None = None
    earthmon_bn_recalibration_batches: int | None = None

    @property
    def effective_crop_size(self) -> int:
        """``crop_size`` rounded up to a multiple of 8, as the built-in algorithm does."""
        return int(math.ceil(self.crop_size / 8) * 8)

    def to_strings(self) -> dict[str, str]:
        """The hyperparameters as SageMaker-style strings (``hyperparams.json`` of the model artifact)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = ",".join(str(v) for v in value)
            elif isinstance(value, bool):
                value = "True" if value else "False"
            out[f.name] = str(value)
        return out


# ---------------------------------------------------------------------------------------------- parsing
# Upper bounds that refuse a mistyped value in one line instead of an out-of-memory error deep in MXNet; far above
# anything the built-in algorithm trains on a real instance (crop 240, base 520, batch 16, 10 epochs by default).
MAX_IMAGE_SIDE = 8192
MAX_BATCH = 4096
MAX_EPOCHS = 100_000


def _int(lo: int | None = None, hi: int | None = None) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError("expected an integer")
        text = str(v).strip()
        try:
            i = int(text)  # exact, whatever the size (no rounding through float)
        except ValueError:
            try:  # "10.0" and "1e3" as the built-in accepts them, when exactly an integer
                f = float(text)
            except ValueError:
                raise ValueError("expected an integer") from None
            if not math.isfinite(f) or not f.is_integer() or abs(f) > 2**53:
                raise ValueError("expected an integer") from None
            i = int(f)
        _check_range(i, lo, hi)
        return i

    return parse


def _float(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable[[Any], float]:
    def parse(v: Any) -> float:
        if isinstance(v, bool):
            raise ValueError("expected a number")
        try:
            f = float(str(v).strip())
        except ValueError:
            raise ValueError("expected a number") from None
        if not math.isfinite(f):
            raise ValueError("expected a finite number")
        if lo_open and lo is not None and f <= lo:
            raise ValueError(f"must be > {lo:g}")
        _check_range(f, lo, hi)
        return f

    return parse


def _check_range(v, lo, hi):
    if lo is not None and v < lo:
        raise ValueError(f"must be >= {lo:g}")
    if hi is not None and v > hi:
        raise ValueError(f"must be <= {hi:g}")


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "1", "yes"):
        return True
    if s in ("false", "0", "no"):
        return False
    raise ValueError("expected True or False")


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        s = str(v).strip().lower()
        if s not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return s

    return parse


def _int_list(v: Any) -> tuple[int, ...]:
    parts = [p.strip() for p in str(v).strip().strip("[]").split(",") if p.strip()]
    if not parts:
        raise ValueError("expected comma-separated epochs, e.g. 10,20")
    try:
        out = tuple(_int(lo=1)(p) for p in parts)
    except ValueError:
        raise ValueError("expected comma-separated positive integers (epochs), e.g. 10,20") from None
    if list(out) != sorted(set(out)):
        raise ValueError("epochs must be increasing, e.g. 10,20")
    return out


def _names(v: Any) -> tuple[str, ...]:
    names = tuple(p.strip() for p in str(v).split(",") if p.strip())
    if not names:
        raise ValueError("expected comma-separated class names")
    return names


def _path(v: Any) -> str:
    s = str(v).strip()
    if not s:
        raise ValueError("expected a file path")
    return s


PARSERS: dict[str, Callable[[Any], Any]] = {
    "num_classes": _int(2, 254),
    "num_training_samples": _int(1, 10**9),
    "backbone": _choice(BACKBONES),
    "algorithm": _choice(ALGORITHMS),
    "use_pretrained_model": _bool,
    "base_size": _int(17, MAX_IMAGE_SIDE),
    "crop_size": _int(17, MAX_IMAGE_SIDE),
    "epochs": _int(1, MAX_EPOCHS),
    "learning_rate": _float(0.0, 1.0, lo_open=True),
    "optimizer": _choice(OPTIMIZERS),
    "lr_scheduler": _choice(LR_SCHEDULERS),
    "lr_scheduler_factor": _float(0.0, 1.0),
    "lr_scheduler_step": _int_list,
    "mini_batch_size": _int(1, MAX_BATCH),
    "validation_mini_batch_size": _int(1, MAX_BATCH),
    "momentum": _float(0.0, 1.0),
    "weight_decay": _float(0.0, 1.0),
    "gamma1": _float(0.0, 1.0),
    "gamma2": _float(0.0, 1.0),
    "early_stopping": _bool,
    "early_stopping_min_epochs": _int(1, MAX_EPOCHS),
    "early_stopping_patience": _int(1, MAX_EPOCHS),
    "early_stopping_tolerance": _float(0.0, 1.0),
    "syncbn": _bool,
    "precision_dtype": _choice(PRECISIONS),
    "pretrained_weights": _path,
    "class_names": _names,
    "seed": _int(0, 2**32 - 1),
    "aux_loss_weight": _float(0.0, 10.0),
    "earthmon_compute_threads": _int(1, 1024),
    "earthmon_data_workers": _int(0, 64),
    "earthmon_bn_recalibration_batches": _int(0, 1000),
}
REQUIRED = ("num_classes", "num_training_samples")


def is_ignored_key(key: str) -> bool:
    return any(key.startswith(p) for p in IGNORED_PREFIXES)


def parse_hyperparameters(raw: Mapping[str, Any]) -> Hyperparameters:
    """Validate ``raw`` (e.g. the contents of hyperparameters.json) into :class:`Hyperparameters`."""
    if not isinstance(raw, Mapping):
        raise HyperparameterError([f"hyperparameters must be a JSON object, not {type(raw).__name__}"])
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key in sorted(raw):
        value = raw[key]
        if key in PARSERS:
            try:
                values[key] = PARSERS[key](value)
            except ValueError as exc:
                problems.append(f"{key}={value!r}: {exc}")
        elif not is_ignored_key(str(key)):
            hint = _closest(str(key))
            problems.append(
                f"unknown hyperparameter {key!r}" + (f" (did you mean {hint!r}?)" if hint else "")
            )
    for key in REQUIRED:
        if key not in raw:
            problems.append(f"{key} is required")
    if not problems:
        names = values.get("class_names")
        if names is not None and len(names) != values["num_classes"]:
            problems.append(f"class_names has {len(names)} names for num_classes={values['num_classes']}")
    if problems:
        raise HyperparameterError(problems)
    return Hyperparameters(**values)


def _closest(key: str) -> str | None:
    import difflib

    match = difflib.get_close_matches(key, PARSERS.keys(), n=1, cutoff=0.75)
    return match[0] if match else None
