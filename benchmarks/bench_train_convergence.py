"""Convergence from scratch: validation mIoU against wall time on easy generated data, built-in defaults vs the
documented settings, each run the real training job (segmentation_trainer.train.run_training).

Data (issue 11): bright building-like rectangles on speckle, 200 training and 40 validation tiles of 128 x 128,
8-bit RGB PNG (segmentation_trainer.synthetic.generate_rectangles). No pretrained weights. Configurations:

- ``before``: the built-in's defaults (SGD, learning_rate 0.001, base_size 520, crop 128, batch 8) and no
  batch-norm re-estimation (``earthmon_bn_recalibration_batches=0``, what the trainer did before issue 11);
- ``defaults``: the same hyperparameters with this trainer's default re-estimation of the batch-norm statistics
  before each validation;
- ``documented``: the settings docs/performance-trainer.md recommends from scratch: base_size = the tile size
  (128; the built-in's 520 rescales 128 px tiles 2 to 8 times during training, so validation tiles at their
  own scale look unlike anything trained on), learning_rate 0.01, cosine schedule.

Each configuration runs ``--epochs`` epochs (or until ``--minutes``); prints epoch, elapsed time, training loss,
validation mIoU and pixel accuracy, and the best mIoU with the time it was reached.

    .venv-trainer/bin/python benchmarks/bench_train_convergence.py                    # ResNet-50 (slow on CPU)
    .venv-trainer/bin/python benchmarks/bench_train_convergence.py --backbone tiny    # minutes
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "before": {"earthmon_bn_recalibration_batches": "0"},
    "defaults": {},
    "documented": {"base_size": "128", "learning_rate": "0.01", "lr_scheduler": "cosine"},
    # ablations (--configs): each change alone
    "documented-no-bn": {
        "base_size": "128",
        "learning_rate": "0.01",
        "lr_scheduler": "cosine",
        "earthmon_bn_recalibration_batches": "0",
    },
    "base-size": {"base_size": "128"},
    "base-size-no-bn": {"base_size": "128", "earthmon_bn_recalibration_batches": "0"},
}


def run(data: Path, work: Path, name: str, args) -> list[dict]:
    from segmentation_trainer.contract import TrainingPaths
    from segmentation_trainer.train import RunOptions, run_training

    base = work / name
    (base / "input" / "config").mkdir(parents=True)
    data_dir = base / "input" / "data"
    data_dir.mkdir(parents=True)
    for channel in ("train", "train_annotation", "validation", "validation_annotation"):
        (data_dir / channel).symlink_to(data / channel)
    hp = {
        "num_classes": "2",
        "num_training_samples": str(args.train),
        "backbone": args.backbone,
        "use_pretrained_model": "False",
        "crop_size": str(args.crop),
        "mini_batch_size": str(args.batch),
        "validation_mini_batch_size": "8",
        "epochs": str(args.epochs),
        **CONFIGS[name],
    }
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hp))
    stop = threading.Event()
    timer = threading.Timer(args.minutes * 60, stop.set)
    timer.start()
    try:
        code = run_training(
            TrainingPaths(base), RunOptions(stop=stop, onnx=False, install_signal_handler=False)
        )
    finally:
        timer.cancel()
    if code != 0:
        raise RuntimeError((base / "output" / "failure").read_text())
    return json.loads((base / "output" / "data" / "training_history.json").read_text())["history"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet-50", choices=["resnet-50", "resnet-101", "tiny"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock cap per configuration")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--val", type=int, default=40)
    parser.add_argument("--configs", default="before,defaults,documented")
    parser.add_argument("--json", type=Path, help="write the curves here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from segmentation_trainer.synthetic import generate_rectangles

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_rectangles(Path(tmp) / "data", args.train, args.val, 128, seed=1)
        print(
            f"{args.train} training / {args.val} validation tiles of 128 px (rectangles on speckle); "
            f"{args.backbone} from scratch, crop {args.crop}, batch {args.batch}, {args.epochs} epochs; "
            f"load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        for name in args.configs.split(","):
            started = time.monotonic()
            history = run(data, Path(tmp) / "jobs", name, args)
            results[name] = history
            print(f"\n{name}: {json.dumps(CONFIGS[name]) if CONFIGS[name] else 'no overrides'}")
            print("epoch  elapsed   train loss  val mIoU  val acc  samples/s")
            for h in history:
                print(
                    f"{h['epoch']:5d}  {h['elapsed_s'] / 60:5.1f} min  {h['train_loss']:9.4f}  "
                    f"{h['validation_mIOU']:8.4f}  {h['validation_pixel_accuracy']:7.4f}  {h['throughput']:8.2f}"
                )
            best = max(history, key=lambda h: h["validation_mIOU"])
            print(
                f"{name}: best mIoU {best['validation_mIOU']:.4f} at epoch {best['epoch']} "
                f"({best['elapsed_s'] / 60:.1f} min), {(time.monotonic() - started) / 60:.1f} min in all, "
                f"load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": None}, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
