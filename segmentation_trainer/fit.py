"""The training loop: loss, optimizer and schedule, metric lines, validation, early stopping, checkpoints.

Metric lines are the built-in algorithm's, byte for byte, so the same MetricDefinitions and tuning
objectives (``validation:mIOU``, ``validation:pixel_accuracy``) work::

    #quality_metric. host: algo-1, epoch: 0, train loss: 1.4757 .
    #quality_metric. host: algo-1, epoch: 0, validation pixel_accuracy: 0.8472 .
    #quality_metric. host: algo-1, epoch: 0, validation mIOU: 0.5063 .
    #throughput_metric. host: algo-1, epoch: 0, train throughput: 55.04 samples/sec.

Checkpoints (``checkpoint_dir``, every epoch, atomically): ``last.params`` (network), ``trainer.states``
(optimizer state, update count, schedule), ``best.params`` and ``state.json`` (epoch, best mIoU, history,
early-stopping counters, a fingerprint of the network and data). A restarted job (spot) with the same
fingerprint resumes after the last completed epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segmentation_trainer.contract import IGNORE_LABEL, METRIC_DEFINITIONS, QUALITY_LINE, THROUGHPUT_LINE
from segmentation_trainer.data import Dataset, native_scale_batches, training_batches, validation_batches
from segmentation_trainer.hyperparameters import Hyperparameters
from segmentation_trainer.metrics import confusion_matrix, mean_iou, pixel_accuracy

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
LAST_PARAMS = "last.params"
BEST_PARAMS = "best.params"
TRAINER_STATES = "trainer.states"
PROGRESS_EVERY_S = 30.0


# ----------------------------------------------------------------------------------------------- metric lines
# The formats and the MetricDefinitions that read them live in segmentation_trainer.contract (the launcher sends
# the same definitions); METRIC_DEFINITIONS is re-exported here for the tests.
__all__ = ["METRIC_DEFINITIONS", "quality_line", "throughput_line"]


def quality_line(host: str, epoch: int, name: str, value: float) -> str:
    return QUALITY_LINE.format(host=host, epoch=epoch, name=name, value=value)


def throughput_line(host: str, epoch: int, samples_per_sec: float) -> str:
    return THROUGHPUT_LINE.format(host=host, epoch=epoch, name="train throughput", value=samples_per_sec)


def _emit(line: str) -> None:
    print(line, flush=True)


# ----------------------------------------------------------------------------------------------- early stopping
@dataclass
class EarlyStopping:
    """The built-in's rule: after ``min_epochs``, an epoch whose mIoU improves the best by less than
    ``tolerance`` (relative) is a bad epoch; ``patience`` bad epochs in a row stop training."""

    enabled: bool
    min_epochs: int
    patience: int
    tolerance: float
    bad_epochs: int = 0

    def update(self, epoch: int, miou: float, best_before: float | None) -> bool:
        """Record epoch ``epoch`` (0-based); True when training should stop."""
        if not self.enabled:
            return False
        if best_before is None:
            improved = True
        elif best_before <= 0:
            improved = miou > best_before
        else:
            improved = miou > best_before and (miou - best_before) / best_before >= self.tolerance
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        return epoch + 1 >= self.min_epochs and self.bad_epochs >= self.patience


# ----------------------------------------------------------------------------------------------- state
@dataclass
class FitState:
    fingerprint: str
    epoch: int = -1  # last completed epoch
    best_miou: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    history: list = field(default_factory=list)
    stopped_early: bool = False

    def to_json(self) -> dict:
        return self.__dict__.copy()


@dataclass
class FitResult:
    state: FitState
    best_params: Path | None
    interrupted: bool
    seconds: float


def fingerprint(hp: Hyperparameters, network_config, n_train: int, bands: int) -> str:
    """What must match for a checkpoint to be resumed (structure and data, not the epoch count)."""
    key = {
        "network": network_config.__dict__,
        "crop_size": hp.effective_crop_size,
        "n_train": n_train,
        "bands": bands,
        "batch": hp.mini_batch_size,
        "optimizer": hp.optimizer,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_state(checkpoint_dir: Path | None, fp: str) -> FitState | None:
    if checkpoint_dir is None:
        return None
    path = checkpoint_dir / STATE_FILE
    if not path.is_file() or not (checkpoint_dir / LAST_PARAMS).is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("checkpoint %s is unreadable: starting from scratch", path)
        return None
    if raw.get("fingerprint") != fp:
        log.warning(
            "checkpoint in %s is for another network or dataset (fingerprint %s, this job %s): starting from "
            "scratch; it will be overwritten after the first epoch",
            checkpoint_dir,
            raw.get("fingerprint"),
            fp,
        )
        return None
    return FitState(**{k: v for k, v in raw.items() if k in FitState.__dataclass_fields__})


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_save(save: Callable[[str], None], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save(str(tmp))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- optimizer
def make_trainer(net, hp: Hyperparameters, iters_per_epoch: int, n_devices: int):
    import mxnet as mx
    from gluoncv.utils import LRScheduler

    scheduler = LRScheduler(
        mode=hp.lr_scheduler,
        base_lr=hp.learning_rate,
        nepochs=hp.epochs,
        iters_per_epoch=iters_per_epoch,
        power=0.9,
        step_epoch=list(hp.lr_scheduler_step) if hp.lr_scheduler == "step" else None,
        step_factor=hp.lr_scheduler_factor,
    )
    params = {"learning_rate": hp.learning_rate, "wd": hp.weight_decay, "lr_scheduler": scheduler}
    if hp.optimizer in ("sgd", "nag"):
        params["momentum"] = hp.momentum
    if hp.optimizer == "rmsprop":
        # centered RMSProp: gamma1 decays the squared-gradient average, gamma2 is the momentum factor
        params.update(gamma1=hp.gamma1, gamma2=hp.gamma2, centered=True)
    if hp.precision_dtype == "float16":
        params["multi_precision"] = True
    kvstore = "device" if n_devices > 1 else "local"
    return mx.gluon.Trainer(net.collect_params(), hp.optimizer, params, kvstore=kvstore)


def _loss_block():
    from mxnet.gluon import HybridBlock

    class SegmentationLoss(HybridBlock):
        """Mean cross-entropy over labelled pixels (255 ignored) of the main output (+ weighted aux output)."""

        def __init__(self, aux_weight: float):
            super().__init__()
            self.aux_weight = aux_weight

        def _ce(self, F, logits, label):
            valid = label != IGNORE_LABEL
            safe = F.where(valid, label, F.zeros_like(label))
            nll = -F.pick(F.log_softmax(logits.astype("float32"), axis=1), safe, axis=1)
            return F.sum(nll * valid) / F.maximum(F.sum(valid), 1.0)

        def hybrid_forward(self, F, label, *outputs):
            loss = self._ce(F, outputs[0], label)
            if len(outputs) > 1 and self.aux_weight:
                loss = loss + self.aux_weight * self._ce(F, outputs[1], label)
            return loss

    return SegmentationLoss


# ----------------------------------------------------------------------------------------------- evaluation
def evaluate_dataset(net, dataset: Dataset, ctx, batch_size: int, num_classes: int) -> np.ndarray:
    """Confusion matrix of ``net`` over whole validation images."""
    import mxnet as mx

    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for data, label in validation_batches(dataset, batch_size):
        out = net(mx.nd.array(data, ctx=ctx, dtype=_dtype_of(net)))
        out = out[0] if isinstance(out, list | tuple) else out
        pred = out.argmax(axis=1).asnumpy().astype(np.int64)
        cm += confusion_matrix(pred, label, num_classes)
    return cm


DEFAULT_BN_CALIBRATION_MAX = 8


def bn_calibration_batches(hp: Hyperparameters, iters_per_epoch: int) -> int:
    """Training batches to re-estimate the batch-norm statistics with at the end of each epoch.

    ``earthmon_bn_recalibration_batches`` when set (0 turns it off); else a quarter of the epoch's batches,
    1 to 8 (at most ~25 % more compute per epoch; docs/performance-trainer.md has the measurements).
    """
    if hp.earthmon_bn_recalibration_batches is not None:
        return hp.earthmon_bn_recalibration_batches
    return max(1, min(DEFAULT_BN_CALIBRATION_MAX, iters_per_epoch // 4))


def batchnorm_layers(net) -> list:
    """Every BatchNorm block of ``net`` (SyncBatchNorm included), depth first."""
    from mxnet.gluon import nn

    found = []

    def walk(block) -> None:
        if isinstance(block, nn.BatchNorm) or type(block).__name__ in ("SyncBatchNorm", "BatchNorm"):
            found.append(block)
        for child in block._children.values():
            walk(child)

    walk(net)
    return found


def recalibrate_batchnorm(net, batches, ctxs, dtype: str = "float32") -> int:
    """Re-estimate every BatchNorm layer's running mean and variance for the current weights ("precise BN").

    During training the running statistics are exponential averages (momentum 0.9) of batch statistics taken
    while the weights were changing; after few iterations they lag the weights, and evaluation (which uses them)
    sees a different network from the one the loss measured. This resets them, runs training-mode forward passes
    over ``batches`` (the training transform's batches; the weights are not changed: no optimizer step) and
    sets each running statistic to the debiased exponential average of the batch statistics of the final
    weights. In a hybridized (static) graph the statistics are only written with a backward pass, so one is run
    (the gradients are overwritten by the next training step). Returns the number of batches used.
    """
    import mxnet as mx
    from mxnet import autograd

    layers = batchnorm_layers(net)
    if not layers:
        return 0
    stats = []
    for layer in layers:
        momentum = float(layer._kwargs.get("momentum", 0.9))
        for p in (layer.running_mean, layer.running_var):
            p.set_data(mx.nd.zeros(p.shape, dtype=p.dtype))
        stats.append((layer, momentum))
    n = 0
    for data, _label in batches:
        datas = mx.gluon.utils.split_and_load(mx.nd.array(data, dtype=dtype), ctxs, even_split=False)
        with autograd.record():
            heads = []
            for x in datas:
                out = net(x)
                out = out if isinstance(out, list | tuple) else (out,)
                heads.append(sum(o.sum() for o in out) * 0)
        autograd.backward(heads)
        n += 1
    mx.nd.waitall()
    if n == 0:
        return 0
    for layer, momentum in stats:
        scale = 1.0 / (1.0 - momentum**n) if momentum < 1 else 1.0
        for p in (layer.running_mean, layer.running_var):
            for ctx in p.list_ctx():
                arr = p.data(ctx)
                arr *= scale
    return n


def _dtype_of(net) -> str:
    for p in net.collect_params().values():
        return str(np.dtype(p.dtype).name)
    return "float32"


# ----------------------------------------------------------------------------------------------- the loop
@dataclass
class FitConfig:
    hp: Hyperparameters
    host: str = "algo-1"
    checkpoint_dir: Path | None = None
    workers: int = 2
    progress_every_s: float = PROGRESS_EVERY_S
    max_batches_per_epoch: int | None = None  # for tests and benchmarks
    on_batch: Callable[[int, int, int], None] | None = None  # (epoch, batch, samples) after each step
    on_epoch: Callable[[dict], None] | None = None  # the epoch's record, after validation


def fit(
    net,
    train: Dataset,
    validation: Dataset | None,
    ctxs: list,
    config: FitConfig,
    stop: threading.Event | None = None,
    fp: str = "",
) -> FitResult:
    """Train ``net`` in place; returns the final state and the best parameter file (checkpoint dir)."""
    import mxnet as mx
    from mxnet import autograd

    hp = config.hp
    stop = stop or threading.Event()
    started = time.monotonic()
    ckpt = config.checkpoint_dir
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
    crop = hp.effective_crop_size
    batch_size = hp.mini_batch_size
    if len(train) < batch_size:
        log.warning(
            "only %d training samples for mini_batch_size %d: batches are smaller", len(train), batch_size
        )
    iters_per_epoch = max(1, math.ceil(hp.num_training_samples / batch_size))
    actual_iters = max(1, len(train) // batch_size)
    if config.max_batches_per_epoch:
        actual_iters = min(actual_iters, config.max_batches_per_epoch)
        iters_per_epoch = actual_iters
    if hp.num_training_samples != len(train) and not config.max_batches_per_epoch:
        log.warning(
            "num_training_samples=%d but the train channel has %d samples: the learning-rate schedule "
            "follows num_training_samples (%d iterations per epoch), as the built-in algorithm's does",
            hp.num_training_samples,
            len(train),
            iters_per_epoch,
        )
    if hp.precision_dtype == "float16":
        net.cast("float16")
    trainer = make_trainer(net, hp, iters_per_epoch, len(ctxs))
    loss_fn = _loss_block()(hp.aux_loss_weight)
    loss_fn.hybridize()
    net.hybridize(static_alloc=True, static_shape=True)

    state = load_state(ckpt, fp) or FitState(fingerprint=fp)
    if state.epoch >= 0:
        net.load_parameters(str(ckpt / LAST_PARAMS), ctx=ctxs)
        if hp.precision_dtype == "float16":
            net.cast("float16")
        trainer.load_states(str(ckpt / TRAINER_STATES))
        log.info("resumed from checkpoint: epoch %d done, best mIoU %s", state.epoch, state.best_miou)
    stopper = EarlyStopping(
        hp.early_stopping,
        hp.early_stopping_min_epochs,
        hp.early_stopping_patience,
        hp.early_stopping_tolerance,
        state.bad_epochs,
    )
    dtype = "float16" if hp.precision_dtype == "float16" else "float32"
    interrupted = False
    first_epoch = state.epoch + 1
    if state.stopped_early:
        first_epoch = hp.epochs
    for epoch in range(first_epoch, hp.epochs):
        rng = np.random.default_rng([hp.seed, epoch])
        mx.random.seed(hp.seed * 1000 + epoch)
        t0 = time.monotonic()
        last_report = t0
        seen = 0
        loss_sum, loss_n = 0.0, 0
        batches = training_batches(train, batch_size, hp.base_size, crop, rng, workers=config.workers)
        for i, (data, label) in enumerate(batches):
            if i >= actual_iters:
                break
            datas = mx.gluon.utils.split_and_load(mx.nd.array(data, dtype=dtype), ctxs, even_split=False)
            labels = mx.gluon.utils.split_and_load(
                mx.nd.array(label, dtype="float32"), ctxs, even_split=False
            )
            with autograd.record():
                losses = [loss_fn(y, *net(x)) for x, y in zip(datas, labels, strict=True)]
            autograd.backward(losses)
            trainer.step(len(ctxs))
            batch_loss = sum(float(v.asscalar()) for v in losses) / len(losses)
            if not math.isfinite(batch_loss):
                raise FloatingPointError(
                    f"training diverged: loss is {batch_loss} at epoch {epoch}, batch {i}; "
                    f"lower learning_rate (now {hp.learning_rate})"
                )
            loss_sum += batch_loss
            loss_n += 1
            seen += data.shape[0]
            if config.on_batch is not None:
                config.on_batch(epoch, i, data.shape[0])
            now = time.monotonic()
            if now - last_report >= config.progress_every_s:
                rate = seen / (now - t0)
                left = (actual_iters - i - 1) * batch_size / max(rate, 1e-9)
                log.info(
                    "epoch %d/%d batch %d/%d loss %.4f lr %.3g %.2f samples/s, epoch ETA %s",
                    epoch + 1,
                    hp.epochs,
                    i + 1,
                    actual_iters,
                    loss_sum / loss_n,
                    trainer.learning_rate,
                    rate,
                    _duration(left),
                )
                last_report = now
            if stop.is_set():
                interrupted = True
                break
        train_seconds = time.monotonic() - t0
        if interrupted:
            log.warning("stop requested (SIGTERM): leaving the loop in epoch %d", epoch)
            break
        throughput = seen / train_seconds if train_seconds > 0 else 0.0
        train_loss = loss_sum / max(loss_n, 1)
        _emit(quality_line(config.host, epoch, "train loss", train_loss))
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "throughput": throughput,
            "seconds": train_seconds,
        }
        calibration = bn_calibration_batches(hp, actual_iters)
        if calibration:
            c0 = time.monotonic()
            calib_rng = np.random.default_rng([hp.seed, epoch, 1])
            used = recalibrate_batchnorm(
                net, native_scale_batches(train, batch_size, crop, calib_rng, calibration), ctxs, dtype
            )
            record["bn_recalibration"] = {"batches": used, "seconds": round(time.monotonic() - c0, 2)}
            log.info(
                "batch-norm statistics re-estimated for the epoch's final weights on %d batches of training images at their own scale in %.1f s",
                used,
                time.monotonic() - c0,
            )
        best_before = state.best_miou
        stop_now = False
        if validation is not None and len(validation):
            cm = evaluate_dataset(
                net, validation, ctxs[0], hp.validation_mini_batch_size, net.config.num_classes
            )
            miou, acc = mean_iou(cm), pixel_accuracy(cm)
            _emit(quality_line(config.host, epoch, "validation pixel_accuracy", acc))
            _emit(quality_line(config.host, epoch, "validation mIOU", miou))
            record.update(validation_mIOU=miou, validation_pixel_accuracy=acc)
            if best_before is None or miou > best_before:
                state.best_miou, state.best_epoch = miou, epoch
                if ckpt is not None:
                    _atomic_save(net.save_parameters, ckpt / BEST_PARAMS)
            stop_now = stopper.update(epoch, miou, best_before)
        _emit(throughput_line(config.host, epoch, throughput))
        log.info(
            "epoch %d/%d done in %s: train loss %.4f%s, %.2f samples/s",
            epoch + 1,
            hp.epochs,
            _duration(time.monotonic() - t0),
            train_loss,
            f", validation mIoU {record['validation_mIOU']:.4f}" if "validation_mIOU" in record else "",
            throughput,
        )
        record["elapsed_s"] = time.monotonic() - started
        state.epoch = epoch
        state.bad_epochs = stopper.bad_epochs
        state.history.append(record)
        if config.on_epoch is not None:
            config.on_epoch(record)
        state.stopped_early = stop_now
        if ckpt is not None:
            _atomic_save(net.save_parameters, ckpt / LAST_PARAMS)
            _atomic_save(trainer.save_states, ckpt / TRAINER_STATES)
            _atomic_write_text(ckpt / STATE_FILE, json.dumps(state.to_json(), indent=1))
        if stop_now:
            log.info(
                "early stopping after epoch %d: no relative mIoU improvement >= %g for %d epochs",
                epoch,
                hp.early_stopping_tolerance,
                hp.early_stopping_patience,
            )
            break
        if stop.is_set():
            interrupted = True
            break
    best = ckpt / BEST_PARAMS if ckpt is not None and (ckpt / BEST_PARAMS).is_file() else None
    return FitResult(state, best, interrupted, time.monotonic() - started)


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
