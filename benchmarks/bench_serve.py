"""Load benchmark of the inference server: requests/s and p50/p99 latency for 512 x 512 requests on loopback.

Starts the real server (``python -m segmentation_trainer.serving``: gunicorn, the image's entry point) on a
model directory with a DeepLabV3 network of the production size (random weights: the compute is the same),
drives it with concurrent clients for a fixed time, and prints one line per server layout with its ratio
to the baseline layout measured in the same run (baseline: a single worker using every vCPU, i.e. no
pre-forked concurrency; then the server's default layout: one single-threaded worker per vCPU).

    .venv-trainer/bin/python benchmarks/bench_serve.py                      # DeepLabV3-ResNet50, crop 240
    .venv-trainer/bin/python benchmarks/bench_serve.py --backbone tiny --crop 64 --duration 10   # quick
    .venv-trainer/bin/python benchmarks/bench_serve.py --layouts default --engines mxnet,onnx   # the engines

``--engines`` (default ``mxnet``): each layout runs once per engine (EARTHMON_SERVE_ENGINE), the first engine of
the first layout is the baseline. The model directory holds ``model.onnx`` (exported as at the end of training).

Every request must succeed: any error or non-200 answer is counted and makes the exit status non-zero.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_model_dir(directory: Path, backbone: str, algorithm: str, crop: int, bands: int) -> None:
    import mxnet as mx

    from segmentation_trainer.export import build_metadata, save_model_dir
    from segmentation_trainer.model import NetworkConfig, build_network

    config = NetworkConfig(num_classes=2, algorithm=algorithm, backbone=backbone, bands=bands)
    net = build_network(config)
    net(mx.nd.zeros((1, bands, crop, crop)))
    metadata = build_metadata(
        config, mean=[0.1] * bands, std=[0.2] * bands, crop_size=crop, class_names=["background", "building"]
    )
    save_model_dir(net, metadata, directory, symbol=False, onnx=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    base: Path, workers: int, threads: int, engine: str = "mxnet"
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(base),
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "PYTHONPATH": str(ROOT),
        "EARTHMON_SERVE_ENGINE": engine,
    }
    log = (base / f"server-{workers}x{threads}-{engine}.log").open("wb")
    cmd = [sys.executable, "-m", "segmentation_trainer.serving", "--host", "127.0.0.1"]
    cmd += ["--workers", str(workers), "--threads-per-worker", str(threads)]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> float:
    import requests

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError("server exited during start-up")
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:  # not listening yet, or a slow /ping while workers load
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready in {timeout} s")


def load(url: str, body: bytes, concurrency: int, duration: float) -> dict:
    """``concurrency`` clients, each sending requests back to back for ``duration`` seconds."""
    import requests

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def client() -> None:
        session = requests.Session()
        headers = {"Content-Type": "application/x-npy", "Accept": "image/png"}
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                r = session.post(f"{url}/invocations", data=body, headers=headers, timeout=120)
                ok = r.status_code == 200 and r.content[:4] == b"\x89PNG"
                why = f"HTTP {r.status_code}: {r.text[:200]}"
            except Exception as exc:  # noqa: BLE001 - counted as an error
                ok, why = False, repr(exc)
            elapsed = time.perf_counter() - t0
            with lock:
                (latencies.append(elapsed) if ok else errors.append(why))

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "req_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "wall_s": wall,
    }


def compare_engines(model_dir: Path, batch: int, repeats: int, threads: int) -> dict:
    """Seconds per batch of windows of each engine in one process, alternating (best and median of ``repeats``)."""
    from segmentation_trainer.export import load_model, read_metadata
    from segmentation_trainer.predict import mxnet_forward
    from segmentation_trainer.serving import engines

    metadata = read_metadata(model_dir)
    net, _ = load_model(model_dir)
    net.hybridize(static_alloc=True)
    forwards = {
        "mxnet": mxnet_forward(net),
        "onnx": engines.onnx_forward(engines.onnx_file(model_dir, metadata), threads),
    }
    crop = int(metadata["crop_size"])
    x = np.random.default_rng(0).normal(size=(batch, int(metadata["bands"]), crop, crop)).astype(np.float32)
    times: dict[str, list[float]] = {name: [] for name in forwards}
    for fwd in forwards.values():
        fwd(x)
    for _ in range(repeats):
        for name, fwd in forwards.items():
            t0 = time.perf_counter()
            fwd(x)
            times[name].append(time.perf_counter() - t0)
    diff = float(np.abs(forwards["onnx"](x) - forwards["mxnet"](x)).max())
    return {"times": times, "max_abs_diff": diff, "load_avg": os.getloadavg()[0]}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="resnet-50", choices=["resnet-50", "resnet-101", "tiny"])
    parser.add_argument("--algorithm", default="deeplab", choices=["deeplab", "fcn", "psp"])
    parser.add_argument("--crop", type=int, default=240, help="training crop size = window size")
    parser.add_argument("--bands", type=int, default=4)
    parser.add_argument("--size", type=int, default=512, help="request image side")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per layout")
    parser.add_argument(
        "--layouts", default="1x{cpus},default", help="WORKERSxTHREADS per worker, first = baseline"
    )
    parser.add_argument("--engines", default="mxnet", help="comma-separated: mxnet, onnx, auto")
    parser.add_argument(
        "--compare-engines",
        type=int,
        default=0,
        metavar="REPEATS",
        help="only time MXNet and ONNX Runtime forward passes (a batch of --window-batch windows), alternating, "
        "in one process with --threads math threads; no server",
    )
    parser.add_argument("--window-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="math threads for --compare-engines")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    if args.compare_engines:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[name] = str(args.threads)  # before MXNet is imported (make_model_dir imports it)
        os.environ["MXNET_CPU_WORKER_NTHREADS"] = "1"
        with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
            make_model_dir(Path(tmp) / "model", args.backbone, args.algorithm, args.crop, args.bands)
            out = compare_engines(Path(tmp) / "model", args.window_batch, args.compare_engines, args.threads)
        print(
            f"{args.algorithm}/{args.backbone}, batch of {args.window_batch} windows of {args.crop}x{args.crop}, "
            f"{args.bands} bands, {args.threads} math thread(s), load average {out['load_avg']:.2f}; "
            f"max |onnx - mxnet| = {out['max_abs_diff']:.2e}"
        )
        med = {name: float(np.median(t)) for name, t in out["times"].items()}
        for name, t in out["times"].items():
            print(
                f"{name:6s} median {med[name]:7.3f} s, best {min(t):7.3f} s, runs "
                + " ".join(f"{v:.2f}" for v in t)
            )
        print(f"mxnet / onnx (median): {med['mxnet'] / med['onnx']:.2f}x")
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
        return 0

    from segmentation_trainer.serving.config import default_workers

    cpus = len(os.sched_getaffinity(0))
    workers = default_workers(cpus)
    default = f"{workers}x{max(1, cpus // workers)}"
    layouts = [
        tuple(int(v) for v in s.replace("default", default).format(cpus=cpus).split("x"))
        for s in args.layouts.split(",")
    ]
    body_io = io.BytesIO()
    rng = np.random.default_rng(0)
    np.save(body_io, rng.random((args.bands, args.size, args.size), dtype=np.float32))
    body = body_io.getvalue()
    print(
        f"serve benchmark: {args.algorithm}/{args.backbone}, crop {args.crop}, {args.bands}-band "
        f"{args.size}x{args.size} float32 requests ({len(body) / 2**20:.1f} MiB, application/x-npy -> image/png), "
        f"{args.concurrency} clients x {args.duration:.0f} s per layout, {cpus} CPU(s)"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        base = Path(tmp)
        t0 = time.monotonic()
        make_model_dir(base / "model", args.backbone, args.algorithm, args.crop, args.bands)
        print(f"model directory written in {time.monotonic() - t0:.1f} s")
        for workers, threads, engine in [(w, t, e) for w, t in layouts for e in args.engines.split(",")]:
            proc, url = start_server(base, workers, threads, engine)
            try:
                ready = wait_ready(url, proc)
                load(url, body, workers, min(5.0, args.duration / 4))  # warm-up: every worker's first shapes
                result = load(url, body, args.concurrency, args.duration)
            finally:
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(60)
            result.update(workers=workers, threads=threads, engine=engine, ready_s=ready, exit_code=code)
            result["engine_log"] = [
                line
                for line in (base / f"server-{workers}x{threads}-{engine}.log")
                .read_text(errors="replace")
                .splitlines()
                if " engine " in line
            ][:workers]
            results.append(result)
    base_rps = results[0]["req_per_s"]
    print(
        f"load average {os.getloadavg()[0]:.2f}\n"
        f"{'layout':>24} {'req/s':>8} {'p50 ms':>9} {'p99 ms':>9} {'requests':>9} {'errors':>7} {'vs base':>8}"
    )
    for r in results:
        ratio = r["req_per_s"] / base_rps if base_rps else float("nan")
        layout = f"{r['workers']}w x {r['threads']}t {r['engine']}"
        print(
            f"{layout:>24} {r['req_per_s']:8.2f} {r['p50_ms']:9.0f} {r['p99_ms']:9.0f} "
            f"{r['requests']:9d} {r['errors']:7d} {ratio:7.2f}x"
        )
        for line in r["engine_log"]:
            print(f"  {line[line.index('engine ') :]}")
        if r["first_error"]:
            print(f"  first error: {r['first_error']}")
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=2)
        )
    failed = any(r["errors"] or r["exit_code"] != 0 for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
