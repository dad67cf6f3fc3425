"""NDVI worker benchmark: the worker vs the naive baseline vs the floor, on one full-size synthetic scene.

All three run in the same invocation on the same files, each as its own process (wall time and peak RSS from
wait4), from local files and over HTTP (nginx on 127.0.0.1 with Range support, when nginx is installed).
Prints a Markdown table with the medians and the ratios the issue sets targets for:
  worker vs naive >= 3x faster; worker within 1.3x of the floor; worker peak RSS < 1.2 GB.

    python benchmarks/bench_worker.py [--size 10980] [--repeats 3] [--no-http]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable


def ensure_scene(size: int) -> Path:
    item_id = "S2B_31UFU_20231204_0_L2A"
    folder = HERE / "data" / f"scene-{size}" / item_id
    item = folder / f"{item_id}.json"
    if not item.exists():
        from ndvi_worker.synthetic import write_scene

        print(f"generating a {size} x {size} synthetic scene in {folder} (once) ...", flush=True)
        t = time.monotonic()
        write_scene(folder, item_id=item_id, size=size, seed=1, offset_applied=True)
        print(f"  done in {time.monotonic() - t:.0f}s", flush=True)
    return item


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(root: Path, workdir: Path) -> tuple[subprocess.Popen, int] | None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not nginx:
        return None
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"""daemon off; worker_processes 1; pid {workdir}/nginx.pid; error_log {workdir}/error.log;
events {{ worker_connections 256; }}
http {{ access_log off; sendfile on; client_body_temp_path {workdir}; proxy_temp_path {workdir};
  fastcgi_temp_path {workdir}; uwsgi_temp_path {workdir}; scgi_temp_path {workdir};
  server {{ listen 127.0.0.1:{port}; root {root}; }} }}
"""
    )
    proc = subprocess.Popen([nginx, "-c", str(conf), "-e", str(workdir / "error.log")])
    for _ in range(50):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    return None


def http_item(item: Path, port: int, root: Path, dst: Path) -> Path:
    doc = json.loads(item.read_text())
    rel = item.parent.relative_to(root)
    for asset in doc["assets"].values():
        asset["href"] = f"http://127.0.0.1:{port}/{rel}/{asset['href'].lstrip('./')}"
    dst.mkdir(parents=True, exist_ok=True)
    out = dst / item.name
    out.write_text(json.dumps(doc))
    return out


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one process."""
    t = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(
            f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.read().decode()}"
        )
    return wall, usage.ru_maxrss / 1024


def run_case(label: str, item: Path, work: Path, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    cmds = {
        "naive": lambda out: [PY, str(HERE / "naive_worker.py"), str(item), str(out / "naive.tif")],
        "floor": lambda out: [PY, str(HERE / "floor_worker.py"), str(item), str(out / "floor.tif")],
        "worker": lambda out: [PY, "-m", "ndvi_worker", "--input", str(item.parent), "--output", str(out / "w"),
                               "--overwrite", "--log-level", "WARNING"],
    }  # fmt: skip
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in cmds}
    for r in range(repeats):
        for name, make in cmds.items():  # interleaved, so a busy moment hits every contender
            out = work / f"{label}-{name}-{r}"
            out.mkdir(parents=True, exist_ok=True)
            results[name].append(measure(make(out), env))
            shutil.rmtree(out, ignore_errors=True)
            print(
                f"  {label:5s} {name:6s} run {r + 1}: {results[name][-1][0]:.2f}s, {results[name][-1][1]:.0f} MB",
                flush=True,
            )
    return {k: (statistics.median(w for w, _ in v), max(m for _, m in v)) for k, v in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=10980, help="scene size in 10 m pixels (10980 = full tile)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-http", action="store_true", help="skip the nginx (HTTP range request) case")
    ap.add_argument(
        "--memory-sizes", default="2196,5490", help="extra scene sizes for the worker's peak RSS vs size"
    )
    args = ap.parse_args()

    item = ensure_scene(args.size)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        work = Path(tmp)
        rows.append(("local", run_case("local", item, work, args.repeats)))
        if not args.no_http:
            root = HERE / "data"
            server = start_nginx(root, work)
            if server is None:
                print("nginx not found: skipping the HTTP case (apt-get install nginx-light)")
            else:
                proc, port = server
                try:
                    h_item = http_item(item, port, root, work / "http-item")
                    rows.append(("http", run_case("http", h_item, work, args.repeats)))
                finally:
                    proc.terminate()
                    proc.wait()

    print(f"\n{args.size} x {args.size} scene, median of {args.repeats} runs, peak RSS = max over runs\n")
    print(
        "| source | naive | floor | worker | worker vs naive | worker / floor | RSS naive | RSS floor | RSS worker |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, res in rows:
        n, f, w = res["naive"], res["floor"], res["worker"]
        print(
            f"| {label} | {n[0]:.2f} s | {f[0]:.2f} s | {w[0]:.2f} s | {n[0] / w[0]:.2f}x faster | "
            f"{w[0] / f[0]:.2f}x | {n[1]:.0f} MB | {f[1]:.0f} MB | {w[1]:.0f} MB |"
        )
    print("\ntargets: worker vs naive >= 3x faster, worker / floor <= 1.3x, worker RSS < 1200 MB")

    sizes = [int(x) for x in args.memory_sizes.split(",") if x.strip()]
    if sizes:
        print("\nworker peak RSS against scene size (local files, one run each):\n")
        print("| scene | worker | RSS worker |")
        print("|---|---|---|")
        with tempfile.TemporaryDirectory(prefix="bench-worker-mem-") as tmp:
            for size in [*sizes, args.size]:
                item = ensure_scene(size)
                out = Path(tmp) / str(size)
                cmd = [
                    PY,
                    "-m",
                    "ndvi_worker",
                    "--input",
                    str(item.parent),
                    "--output",
                    str(out),
                    "--log-level",
                    "WARNING",
                ]
                wall, rss = measure(cmd, {**os.environ, "PYTHONPATH": str(HERE.parent)})
                print(f"| {size} x {size} | {wall:.2f} s | {rss:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
