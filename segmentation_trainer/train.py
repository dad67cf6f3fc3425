"""A SageMaker training job, end to end: contract -> hyperparameters -> data -> network -> fit -> artifacts.

``run_training()`` follows the contract (``SAGEMAKER_BASE_DIR`` relocates ``/opt/ml``): it never raises;
on any error it writes ``output/failure`` (``ClientError: ...`` for bad input, ``AlgorithmError: ...``
otherwise, first 1024 characters shown by SageMaker) and returns a non-zero exit status. SIGTERM
(StopTrainingJob, spot interruption) stops after the current batch and still writes the model.
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import signal
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from segmentation_trainer.contract import (
    ContractError,
    TrainingPaths,
    check_channels,
    extract_model_channel,
    missing_contract,
    write_failure,
)
from segmentation_trainer.data import (
    DataError,
    Dataset,
    cache_fits,
    image_info,
    label_lut,
    pair_channel,
    read_label_map,
)
from segmentation_trainer.hyperparameters import HyperparameterError, Hyperparameters, parse_hyperparameters

if TYPE_CHECKING:
    from segmentation_trainer.toolkit import Job

log = logging.getLogger(__name__)

CACHE_LIMIT_BYTES = 4 * 1024**3
PARAM_SUFFIXES = (".params",)


class ClientError(ValueError):
    """A problem the user fixes (inputs, hyperparameters, channels)."""


USER_ERRORS = (ClientError, ContractError, DataError, HyperparameterError)


@dataclass
class RunOptions:
    """Knobs for tests and benchmarks (a SageMaker job uses the defaults)."""

    workers: int | None = None  # data worker threads (None: segmentation_trainer.threads decides)
    max_batches_per_epoch: int | None = None
    onnx: bool = True
    ctxs: list | None = None
    install_signal_handler: bool = True
    stop: threading.Event | None = None  # set it to stop as SIGTERM does (benchmarks: a time budget)


def find_pretrained(paths: TrainingPaths, hp: Hyperparameters) -> Path | None:
    """The backbone weight file: ``pretrained_weights`` (a path, absolute or inside the pretrained channel)
    or the one ``.params`` file of the ``pretrained`` channel (the one naming the backbone if several)."""
    channel = paths.channel("pretrained")
    if hp.pretrained_weights:
        p = Path(hp.pretrained_weights)
        if p.is_absolute():
            candidate = p
        else:  # relative: inside the pretrained channel, never out of it
            candidate = (channel / p).resolve()
            if not candidate.is_relative_to(channel.resolve()):
                raise ClientError(
                    f"pretrained_weights={hp.pretrained_weights} leaves the pretrained channel: give a file name "
                    "inside the channel, or an absolute path"
                )
        if candidate.is_file():
            return candidate
        raise ClientError(
            f"pretrained_weights={hp.pretrained_weights} not found (nor in the pretrained channel)"
        )
    if not channel.is_dir():
        return None
    files = sorted(f for f in channel.rglob("*") if f.is_file() and f.suffix in PARAM_SUFFIXES)
    if len(files) > 1:
        key = hp.backbone.replace("-", "")
        named = [f for f in files if key in f.name]
        files = named if len(named) == 1 else files
    if len(files) != 1:
        raise ClientError(
            f"the pretrained channel must hold one .params file for {hp.backbone} (found "
            f"{len(files)}: {', '.join(f.name for f in files[:5])}); or set pretrained_weights"
        )
    return files[0]


def _class_names(paths: TrainingPaths, hp: Hyperparameters) -> list[str] | None:
    if hp.class_names:
        return list(hp.class_names)
    path = paths.channel("label_map") / "class_names.json"
    if path.is_file():
        names = json.loads(path.read_text())
        if isinstance(names, list) and len(names) == hp.num_classes:
            return [str(n) for n in names]
        log.warning("ignoring %s: expected a list of %d names", path, hp.num_classes)
    return None


def run_training(
    paths: TrainingPaths | None = None, options: RunOptions | None = None, job: Job | None = None
) -> int:
    """Run a training job; returns the process exit status (0 = success). ``job``: the contract as the SageMaker
    training toolkit read it (:func:`segmentation_trainer.toolkit.read_job`; read here when not given)."""
    paths = paths or TrainingPaths.resolve()
    options = options or RunOptions()
    missing = missing_contract(paths)
    if missing is not None:  # not a job directory (a typo?): say so, create nothing
        log.error("ClientError: %s", missing)
        if paths.output_dir.is_dir():
            write_failure(paths, f"ClientError: {missing}")
        return 2
    stop = options.stop or threading.Event()
    previous = None
    if options.install_signal_handler and threading.current_thread() is threading.main_thread():

        def on_term(signum, frame):
            log.warning("SIGTERM received: finishing the current batch, then writing the model")
            stop.set()

        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        _train(paths, options, stop, job)
        return 0
    except USER_ERRORS as exc:
        message = f"ClientError: {exc}"
        log.error("%s", message)
        write_failure(paths, message)
        return 2
    except Exception as exc:
        message = f"AlgorithmError: {type(exc).__name__}: {exc}"
        log.error("training failed\n%s", traceback.format_exc())
        write_failure(paths, message)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _train(paths: TrainingPaths, options: RunOptions, stop: threading.Event, job: Job | None = None) -> None:
    from segmentation_trainer.data import compute_stats
    from segmentation_trainer.devices import contexts, describe
    from segmentation_trainer.export import (
        ModelDirError,
        build_metadata,
        params_path,
        read_metadata,
        save_model_dir,
    )
    from segmentation_trainer.fit import FitConfig, fingerprint, fit
    from segmentation_trainer.model import NetworkConfig, build_network
    from segmentation_trainer.threads import configure as configure_threads
    from segmentation_trainer.toolkit import CODE_CHANNEL, read_job

    started = time.monotonic()
    job = job or read_job(paths)  # hyperparameters, channels, hosts and GPUs as the toolkit reads them
    if len(job.hosts) > 1:
        raise ClientError(
            f"this algorithm trains on one instance (it uses every GPU of it); the job has {len(job.hosts)} "
            "hosts: set InstanceCount=1"
        )
    hp = parse_hyperparameters(job.hyperparameters)
    # thread counts from the instance and the overrides, before MXNet is imported (nothing above imports it)
    overrides = {
        name: getattr(hp, name)
        for name in ("earthmon_compute_threads", "earthmon_data_workers")
        if getattr(hp, name) is not None
    }
    try:
        threads = configure_threads(
            overrides, contract_cpus=getattr(job.env, "num_cpus", None), gpus=job.num_gpus
        )
    except ValueError as exc:
        raise ClientError(str(exc)) from None
    if CODE_CHANNEL in job.input_data_config:
        raise ClientError(
            "the job has a 'code' channel but names no script: set the sagemaker_program hyperparameter (or "
            "SAGEMAKER_PROGRAM) to the script to run, or drop the channel to train the built-in algorithm"
        )
    channels = check_channels(paths, job.input_data_config)
    log.info("channels: %s", ", ".join(channels) or "none")
    if "train" not in channels:
        raise ClientError(f"the train channel is missing ({paths.channel('train')})")
    ctxs = options.ctxs or contexts()
    if hp.precision_dtype == "float16" and all(c.device_type == "cpu" for c in ctxs):
        raise ClientError("precision_dtype=float16 needs a GPU instance; use float32 on CPU instances")
    log.info("training on %s (the toolkit sees %d GPU(s))", describe(ctxs), job.num_gpus)

    label_dir = paths.channel("label_map")
    train_pairs = pair_channel(paths.channel("train"), paths.channel("train_annotation"))
    val_pairs = []
    if "validation" in channels:
        val_pairs = pair_channel(paths.channel("validation"), paths.channel("validation_annotation"))
    else:
        log.warning("no validation channel: no validation metrics; model_best.params = the final model")
    info = image_info(train_pairs[0].image)
    log.info(
        "%d training / %d validation images, %d band(s) %s (%s)",
        len(train_pairs),
        len(val_pairs),
        info.bands,
        info.dtype,
        info.format,
    )

    # incremental training: the model channel's network and normalisation
    base_model = None
    if "model" in channels:
        scratch = Path(tempfile.mkdtemp(prefix="model-channel-"))
        atexit.register(shutil.rmtree, scratch, True)  # read until the end of training; gone with the process
        model_dir = extract_model_channel(paths.channel("model"), scratch)
        try:
            base_model = read_metadata(model_dir)
        except (FileNotFoundError, ModelDirError) as exc:
            raise ClientError(str(exc)) from None
        try:
            base_params = params_path(model_dir, base_model)  # kept inside the extracted model
        except (ModelDirError, FileNotFoundError) as exc:
            raise ClientError(f"model channel: {exc}") from None
    network = NetworkConfig(
        num_classes=hp.num_classes, algorithm=hp.algorithm, backbone=hp.backbone, bands=info.bands, aux=True
    )
    if base_model is not None:
        want = base_model.network_config()
        if (want.num_classes, want.algorithm, want.backbone, want.bands) != (
            network.num_classes,
            network.algorithm,
            network.backbone,
            network.bands,
        ):
            raise ClientError(
                f"the model channel holds a {want.algorithm}/{want.backbone} network for {want.num_classes} classes "
                f"and {want.bands} band(s); this job asks for {network.algorithm}/{network.backbone}, "
                f"{network.num_classes} classes, {network.bands} band(s)"
            )
        mean, std = base_model["mean"], base_model["std"]
        log.info("incremental training from the model channel (its normalisation is kept)")
    else:
        mean, std = compute_stats(train_pairs)
        log.info("normalisation from the training set: mean %s std %s", _fmt(mean), _fmt(std))

    pretrained = None
    if base_model is None and hp.use_pretrained_model:
        if hp.backbone == "tiny":
            raise ClientError("backbone=tiny has no pretrained weights: set use_pretrained_model=False")
        pretrained = find_pretrained(paths, hp)
        if pretrained is None:
            raise ClientError(
                "use_pretrained_model=True but no backbone weights were given (GluonCV's downloads no longer "
                f"work): add a 'pretrained' channel with GluonCV's ImageNet {hp.backbone.replace('-', '')}_v1s "
                ".params file, or set pretrained_weights=<path>, or set use_pretrained_model=False to train "
                "from scratch"
            )
        log.info("backbone weights: %s", pretrained)
    syncbn = len(ctxs) if hp.syncbn and len(ctxs) > 1 else 0
    if hp.syncbn and not syncbn:
        log.info("syncbn=True has no effect on a single device")
    try:
        net = build_network(network, ctx=ctxs, pretrained_backbone=pretrained, syncbn_devices=syncbn)
    except ValueError as exc:
        raise ClientError(str(exc)) from None
    if base_model is not None:
        net.load_parameters(str(base_params), ctx=ctxs, cast_dtype=True, dtype_source="current")

    train_lut = label_lut(read_label_map(label_dir, "train"))
    val_lut = label_lut(read_label_map(label_dir, "validation"))
    cache = cache_fits(train_pairs + val_pairs, info.bands, CACHE_LIMIT_BYTES)
    train_ds = Dataset(train_pairs, train_lut, mean, std, cache=cache)
    val_ds = Dataset(val_pairs, val_lut, mean, std, cache=cache) if val_pairs else None

    config = FitConfig(
        hp=hp,
        host=job.current_host,
        checkpoint_dir=paths.checkpoint_dir,
        workers=threads.data_workers if options.workers is None else options.workers,
        max_batches_per_epoch=options.max_batches_per_epoch,
    )
    fp = fingerprint(hp, network, len(train_pairs), info.bands)
    result = fit(net, train_ds, val_ds, ctxs, config, stop=stop, fp=fp)

    metrics = {
        "best_validation_mIOU": result.state.best_miou,
        "best_epoch": result.state.best_epoch,
        "epochs_completed": result.state.epoch + 1,
        "stopped_early": result.state.stopped_early,
        "interrupted": result.interrupted,
        "history": result.state.history,
        "training_seconds": round(result.seconds, 1),
    }
    metadata = build_metadata(
        network,
        mean=mean,
        std=std,
        crop_size=hp.effective_crop_size,
        base_size=hp.base_size,
        class_names=_class_names(paths, hp),
        band_names=info.band_names,
        nodata=info.nodata,
        input_format=info.format,
        metrics=metrics,
    )
    written = save_model_dir(
        net,
        metadata,
        paths.model_dir,
        best_params=result.best_params,
        hyperparameters=hp.to_strings(),
        onnx=options.onnx and not result.interrupted,
    )
    paths.output_data_dir.mkdir(parents=True, exist_ok=True)
    (paths.output_data_dir / "training_history.json").write_text(json.dumps(metrics, indent=1))
    log.info(
        "model written to %s (%s) in %.0f s total",
        paths.model_dir,
        ", ".join(sorted(p.name for p in paths.model_dir.iterdir())),
        time.monotonic() - started,
    )
    if isinstance(written.get("onnx"), dict) and "error" in written["onnx"]:
        log.warning("ONNX export failed: %s", written["onnx"]["error"])


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
