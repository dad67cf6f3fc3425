"""Proof of learning: train from scratch on generated SN6-like data within a time budget; print the mIoU curve.

Runs the real training job (segmentation_trainer.train.run_training under a temporary SAGEMAKER base dir) on
SN6-like 4-band SAR tiles prepared by prepare-sn6 (GeoTIFF, location split), no pretrained weights, until the
budget (default 15 min of wall time, validation included) runs out; the budget stops it the way SIGTERM does,
and the model is written. Then evaluates the model (mIoU, pixel accuracy, SpaceNet F1) with ``evaluate``.
Target: validation mIoU >= 0.75 within the budget.

    .venv-trainer/bin/python benchmarks/bench_train_convergence.py [--backbone tiny|resnet-50] [--minutes 15]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

TARGET = 0.75


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet-50", choices=["resnet-50", "resnet-101", "tiny"])
    parser.add_argument("--algorithm", default="deeplab", choices=["deeplab", "fcn", "psp"])
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget, validation included")
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--tile-size", type=int, default=128)
    parser.add_argument("--json", type=Path, help="write the curve and the evaluation here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from segmentation_trainer.contract import TrainingPaths
    from segmentation_trainer.evaluate import evaluate
    from segmentation_trainer.sn6 import PrepareOptions, prepare_sn6
    from segmentation_trainer.synthetic import generate_sn6
    from segmentation_trainer.train import RunOptions, run_training

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_sn6(tmp / "sn6", locations=4, strips=4, tiles_per_side=3, tile_size=args.tile_size, seed=7)
        report = prepare_sn6(tmp / "sn6", tmp / "data", PrepareOptions(val_fraction=0.25, progress=False))
        base = tmp / "job"
        (base / "input" / "config").mkdir(parents=True)
        data_dir = base / "input" / "data"
        data_dir.mkdir(parents=True)
        for channel in ("train", "train_annotation", "validation", "validation_annotation", "label_map"):
            (data_dir / channel).symlink_to(tmp / "data" / channel)
        n_train = report["written"]["train"]
        hp = {
            "num_classes": "2",
            "num_training_samples": str(n_train),
            "algorithm": args.algorithm,
            "backbone": args.backbone,
            "use_pretrained_model": "False",
            "crop_size": str(args.crop),
            "base_size": str(args.tile_size),
            "mini_batch_size": str(args.batch),
            "validation_mini_batch_size": "8",
            "learning_rate": str(args.lr),
            "epochs": "1000",
            "lr_scheduler": "cosine",
        }
        (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hp))
        print(
            f"{n_train} training / {report['written']['validation']} validation tiles of {args.tile_size} px "
            f"(4 bands); {args.algorithm}/{args.backbone} from scratch, crop {args.crop}, batch {args.batch}, "
            f"budget {args.minutes:g} min",
            flush=True,
        )
        stop = threading.Event()
        timer = threading.Timer(args.minutes * 60, stop.set)
        started = time.monotonic()
        timer.start()
        try:
            code = run_training(
                TrainingPaths(base), RunOptions(stop=stop, onnx=False, install_signal_handler=False)
            )
        finally:
            timer.cancel()
        wall = time.monotonic() - started
        if code != 0:
            print((base / "output" / "failure").read_text(), file=sys.stderr)
            return code
        history = json.loads((base / "output" / "data" / "training_history.json").read_text())["history"]
        reached = None
        print("epoch  elapsed   train loss  val mIoU  val acc  samples/s")
        for h in history:
            print(
                f"{h['epoch']:5d}  {h['elapsed_s'] / 60:5.1f} min  {h['train_loss']:9.4f}  "
                f"{h['validation_mIOU']:8.4f}  {h['validation_pixel_accuracy']:7.4f}  {h['throughput']:8.2f}"
            )
            if reached is None and h["validation_mIOU"] >= TARGET:
                reached = h
        best = max((h["validation_mIOU"] for h in history), default=0.0)
        result = evaluate(base / "model", tmp / "data")
        print(
            f"best validation mIoU {best:.4f} after {wall / 60:.1f} min; target {TARGET} "
            + (
                f"reached at epoch {reached['epoch']} ({reached['elapsed_s'] / 60:.1f} min)"
                if reached
                else "NOT reached"
            )
        )
        sp = result["spacenet"]
        print(
            f"evaluate (best model): mIoU {result['mIOU']:.4f}, pixel accuracy {result['pixel_accuracy']:.4f}, "
            f"SpaceNet F1 {sp['f1']:.4f} (precision {sp['precision']:.4f}, recall {sp['recall']:.4f})"
        )
        if args.json:
            args.json.write_text(
                json.dumps(
                    {"args": vars(args) | {"json": None}, "history": history, "evaluate": result},
                    indent=1,
                    default=str,
                )
            )
    return 0 if reached else 1


if __name__ == "__main__":
    sys.exit(main())
