"""NDVI worker benchmark: the worker vs the naive baseline vs the floor, on one full-size synthetic scene.

All three run in the same invocation on the same files, each as its own process (wall time, CPU seconds and peak
RSS from wait4), interleaved (run r of every source and contender before run r + 1), from three sources:

* ``local``: the files on disk;
* ``http``: nginx on 127.0.0.1 (Range requests, zero latency, unlimited bandwidth per connection);
* ``shaped``: ``benchmarks/shaped_link.py``, a link that behaves like an object store: every request waits
  ``--latency-ms`` (30) for its first byte, every connection carries at most ``--rate-mbps`` MB/s (60),
  HTTP/1.1 keep-alive, single Range requests.

HTTP requests and bytes on the wire are counted at the server (nginx's access log, the shaped link's counters),
not from the readers' block sizes; the shaped link's own CPU is reported too. The worker's phases (open, chunks,
COG, quicklook: wall / CPU) come from its log. Then the planetary job is projected from the shaped link's time
per scene: 8,581 scenes / (25 jobs x 20 ml.m5.xlarge), at the launcher's on-demand price.

Steady state (``--shard N``): an instance of the planetary job processes a shard of scenes, several in flight, so
its time per scene is not one scene's wall. The worker runs on a shard of N copies of the scene over the shaped link,
on every CPU and pinned to one (the 1 -> 2 CPU scaling), and the planetary job is projected from that: per
ml.m5.xlarge (4 vCPUs = 2 cores with hyper-threading), the instances needed to finish within 20 minutes including
the launcher's start-up, instance-hours and cost, next to the reference layout (25 jobs x 20 instances).

    python benchmarks/bench_worker.py [--size 10980] [--repeats 3] [--no-http] [--latency-ms 30] [--rate-mbps 60]
        [--shard 6]

Goals (issue 13, defaults only, same run): shaped-link worker within 1.1x of its zero-latency (http) time and at
least 5x faster than the naive worker on the same link; at least 4x on local disk; worker peak RSS <= 1 GB;
the planetary job in at most 14 instance-hours (12x fewer than the reference run's 167).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
CONTENDERS = ("naive", "floor", "staging", "before", "worker")
#: run unless --only says otherwise; "staging" is the worker with its previous write path (uncompressed staging
#: GeoTIFFs compressed by GDAL's COG driver at the end, NDVI_STAGING_COG=1): before/after in the same run;
#: "before" is the worker of another source tree (--before-tree, e.g. a ``git worktree`` of the previous commit)
DEFAULT_CONTENDERS = ("naive", "floor", "worker")
#: the reference planetary job (docs/domain.md section 2)
PLANETARY_SCENES, JOBS, INSTANCES_PER_JOB, INSTANCE_TYPE = 8581, 25, 20, "ml.m5.xlarge"
PHASE = re.compile(r"(\w+) ([\d.]+)s/([\d.]+)s")


def ensure_scene(size: int) -> Path:
    item_id = "S2B_31UFU_20231204_0_L2A"
    folder = HERE / "data" / f"scene-{size}" / item_id
    item = folder / f"{item_id}.json"
    if not item.exists():
        print(f"generating a {size} x {size} synthetic scene in {folder} (once) ...", flush=True)
        t = time.monotonic()
        # in a child process: a parent grown by the scene's arrays would make every later child's peak RSS
        # (wait4 counts the forked copy before exec) look that big
        code = (
            "import sys; from pathlib import Path; from ndvi_worker.synthetic import write_scene; "
            f"write_scene(Path(sys.argv[1]), item_id={item_id!r}, size={size}, seed=1, offset_applied=True)"
        )
        subprocess.run([PY, "-c", code, str(folder)], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        print(f"  done in {time.monotonic() - t:.0f}s", flush=True)
    return item


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen) -> bool:
    for _ in range(100):
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


class Nginx:
    """nginx on 127.0.0.1 (zero latency); requests and bytes counted from its access log."""

    def __init__(self, root: Path, workdir: Path):
        exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if not exe:
            raise FileNotFoundError("nginx")
        self.port = free_port()
        self.log = workdir / "access.log"
        conf = workdir / "nginx.conf"
        conf.write_text(
            ("user root;\n" if os.geteuid() == 0 else "")
            + f"""daemon off; worker_processes 1; pid {workdir}/nginx.pid; error_log {workdir}/error.log;
events {{ worker_connections 512; }}
http {{ log_format acct '$request_method $status $bytes_sent $connection';
  access_log {self.log} acct; sendfile on; keepalive_requests 10000;
  client_body_temp_path {workdir}; proxy_temp_path {workdir};
  fastcgi_temp_path {workdir}; uwsgi_temp_path {workdir}; scgi_temp_path {workdir};
  server {{ listen 127.0.0.1:{self.port}; root {root}; }} }}
"""
        )
        self.proc = subprocess.Popen([exe, "-c", str(conf), "-e", str(workdir / "error.log")])
        if not wait_port(self.port, self.proc):
            self.stop()
            raise RuntimeError("nginx did not start")
        self._offset = 0

    def begin(self) -> None:
        self._offset = self.log.stat().st_size if self.log.exists() else 0

    def end(self) -> dict:
        time.sleep(0.2)  # nginx writes its log line after the response
        with open(self.log) as f:
            f.seek(self._offset)
            lines = [line.split() for line in f if line.strip()]
        return {
            "requests": len(lines),
            "bytes": sum(int(p[2]) for p in lines),
            "connections": len({p[3] for p in lines}),
            "server_cpu": None,
        }

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


class ShapedLink:
    """benchmarks/shaped_link.py: per-request latency, per-connection bandwidth, counters at the server."""

    def __init__(self, root: Path, latency_ms: float, rate_mbps: float):
        self.proc = subprocess.Popen(
            [PY, str(HERE / "shaped_link.py"), str(root), "--latency-ms", str(latency_ms),
             "--rate-mbps", str(rate_mbps)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = self.proc.stdout.readline()
        match = re.search(r":(\d+)$", line.strip())
        if not match:
            self.stop()
            raise RuntimeError(f"shaped link did not start: {line!r}")
        self.port = int(match.group(1))
        self._cpu = 0.0

    def _stats(self, reset: bool) -> dict:
        url = f"http://127.0.0.1:{self.port}/_stats" + ("?reset=1" if reset else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def begin(self) -> None:
        self._stats(reset=True)
        self._cpu = self.cpu()

    def end(self) -> dict:
        s = self._stats(reset=True)
        return {
            "requests": s["requests"],
            "bytes": s["bytes_sent"],
            "connections": s["connections"],
            "server_cpu": self.cpu() - self._cpu,
            "max_in_flight": s["max_requests_in_flight"],
        }

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def http_item(item: Path, port: int, root: Path, dst: Path) -> Path:
    doc = json.loads(item.read_text())
    rel = item.parent.relative_to(root)
    for asset in doc["assets"].values():
        asset["href"] = f"http://127.0.0.1:{port}/{rel}/{asset['href'].lstrip('./')}"
    dst.mkdir(parents=True, exist_ok=True)
    out = dst / item.name
    out.write_text(json.dumps(doc))
    return out


def measure(cmd: list[str], env: dict | None = None, cpus: set[int] | None = None) -> dict:
    """Wall seconds, CPU seconds (user + system, children included), peak RSS (MB) and stdout of one process;
    ``cpus``: pin it to these CPUs (as ``taskset -c``)."""
    t = time.monotonic()
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, preexec_fn=pin)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if code != 0:
        raise SystemExit(f"benchmark command failed ({code}): {' '.join(cmd)}\n{stderr[-3000:]}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss": usage.ru_maxrss / 1024,
        "stdout": stdout,
    }


def commands(item: Path, out: Path, before_tree: Path | None = None) -> dict:
    # "before": python -P (no current folder on sys.path) so that PYTHONPATH's tree is the one imported
    before = ["env", f"PYTHONPATH={before_tree}", PY, "-P"] if before_tree else ["false"]
    return {
        "before": [*before, "-m", "ndvi_worker", "--input", str(item.parent), "--output", str(out / "b"),
                   "--overwrite", "--log-level", "INFO"],
        "naive": [PY, str(HERE / "naive_worker.py"), str(item), str(out / "naive.tif")],
        "floor": [PY, str(HERE / "floor_worker.py"), str(item), str(out / "floor.tif")],
        "worker": [PY, "-m", "ndvi_worker", "--input", str(item.parent), "--output", str(out / "w"),
                   "--overwrite", "--log-level", "INFO"],
        "staging": ["env", "NDVI_STAGING_COG=1", PY, "-m", "ndvi_worker", "--input", str(item.parent),
                    "--output", str(out / "s"), "--overwrite", "--log-level", "INFO"],
    }  # fmt: skip


def worker_phases(stdout: str) -> dict[str, tuple[float, float]]:
    for line in stdout.splitlines():
        if "(wall / process CPU" in line:
            return {m.group(1): (float(m.group(2)), float(m.group(3))) for m in PHASE.finditer(line)}
    return {}


def shard_of(item: Path, scenes: int, dst: Path) -> Path:
    """A folder of ``scenes`` items of the same scene (ids suffixed -1, -2, ...): the shard one instance of the
    planetary job processes, scene after scene (the worker keeps its default scenes in flight)."""
    doc = json.loads(item.read_text())
    dst.mkdir(parents=True, exist_ok=True)
    for k in range(scenes):
        copy = json.loads(json.dumps(doc))
        copy["id"] = f"{doc['id']}-{k + 1}"
        # distinct URLs: no cache (GDAL's, the worker's) spans two scenes
        for asset in copy["assets"].values():
            asset["href"] = f"{asset['href']}?copy={k + 1}"
        (dst / f"{copy['id']}.json").write_text(json.dumps(copy))
    return dst


def projection_rows(
    per_scene_2cpu: float, scaling: float | None, startup: float, price: float
) -> list[tuple]:
    """The planetary job (8,581 scenes) on ml.m5.xlarge from the steady-state seconds per scene measured here:
    (what, seconds per scene per instance, instances, instance-hours, cost, wall minutes) per row. A 4-vCPU
    m5.xlarge is 2 physical cores with hyper-threading: counted once as this 2-vCPU machine (no gain from its
    second threads: the conservative row, the launcher's default) and once as twice this machine at the 1 -> 2
    CPU scaling measured here (the upper bound of what 4 vCPUs could give)."""
    from launcher.ndvi.plan import DEADLINE_SECONDS, estimate, fewest_instances

    rows = []
    cases = [("4 vCPUs = this machine's 2 (conservative)", per_scene_2cpu)]
    if scaling:
        cases.append(
            (f"4 vCPUs = 2x this machine at its measured {scaling:.2f}x scaling", per_scene_2cpu / scaling)
        )
    for what, t in cases:
        for instances in (
            JOBS * INSTANCES_PER_JOB,
            fewest_instances(PLANETARY_SCENES, t, DEADLINE_SECONDS, startup),
        ):
            if not instances:
                continue
            e = estimate([(PLANETARY_SCENES, instances)], price, t, startup)
            label = (
                "25 jobs x 20 (the reference layout)"
                if instances == JOBS * INSTANCES_PER_JOB
                else ("fewest instances within 20 min")
            )
            rows.append((f"{what}, {label}", t, instances, e.instance_hours, e.cost_usd, e.wall_hours * 60))
    return rows


def projection(seconds_per_scene: float, startup: float, price: float) -> dict:
    instances = JOBS * INSTANCES_PER_JOB
    per_instance = math.ceil(PLANETARY_SCENES / instances)  # the busiest instance sets the wall time
    wall = per_instance * seconds_per_scene
    return {
        "wall_s": wall,
        "wall_with_startup_s": wall + startup,
        "instance_hours": instances * (wall + startup) / 3600,
        "cost_usd": instances * (wall + startup) / 3600 * price,
        "scenes_per_s": PLANETARY_SCENES / (wall + startup),
        "per_instance": per_instance,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=10980, help="scene size in 10 m pixels (10980 = full tile)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-http", action="store_true", help="local files only (no nginx, no shaped link)")
    ap.add_argument("--latency-ms", type=float, default=30.0, help="shaped link: time to first byte")
    ap.add_argument("--rate-mbps", type=float, default=60.0, help="shaped link: MB/s per connection")
    ap.add_argument(
        "--only",
        default=",".join(DEFAULT_CONTENDERS),
        help="contenders to run (naive,floor,worker; staging = the worker's previous write path; before = the "
        "worker of --before-tree)",
    )
    ap.add_argument(
        "--before-tree",
        type=Path,
        help="source tree of the 'before' contender (e.g. git worktree add --detach /tmp/before HEAD~1)",
    )
    ap.add_argument(
        "--memory-sizes", default="2196,5490", help="extra scene sizes for the worker's peak RSS vs size"
    )
    ap.add_argument(
        "--shard",
        type=int,
        default=6,
        help="steady state: the worker on a shard of this many scenes over the shaped link, on every CPU and "
        "pinned to one (seconds per scene as an instance of the planetary job sees them; 0: skip)",
    )
    args = ap.parse_args()
    only = [c for c in CONTENDERS if c in args.only.split(",")]
    if "before" in only and not (args.before_tree and (args.before_tree / "ndvi_worker").is_dir()):
        ap.error("--only before needs --before-tree pointing at a source tree with ndvi_worker/")

    item = ensure_scene(args.size)
    load0 = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f}",
        flush=True,
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    root = HERE / "data"
    results: dict[str, dict[str, list[dict]]] = {}
    steady: dict[int, list[dict]] = {}  # CPUs -> runs of the worker on a shard
    steady_before: dict[int, list[dict]] = {}  # the same for the 'before' contender
    servers: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        work = Path(tmp)
        sources: dict[str, Path] = {"local": item}
        try:
            if not args.no_http:
                try:
                    (work / "nginx").mkdir()
                    servers["http"] = Nginx(root, work / "nginx")
                    sources["http"] = http_item(item, servers["http"].port, root, work / "http-item")
                except (FileNotFoundError, RuntimeError) as exc:
                    print(
                        f"nginx unavailable ({exc}): no zero-latency HTTP row (apt-get install nginx-light)"
                    )
                servers["shaped"] = ShapedLink(root, args.latency_ms, args.rate_mbps)
                sources["shaped"] = http_item(item, servers["shaped"].port, root, work / "shaped-item")
            for r in range(args.repeats):
                for (
                    label,
                    src,
                ) in sources.items():  # interleaved: a busy moment hits every source and contender
                    for name in only:
                        out = work / f"{label}-{name}-{r}"
                        out.mkdir(parents=True, exist_ok=True)
                        server = servers.get(label)
                        if server:
                            server.begin()
                        m = measure(commands(src, out, args.before_tree)[name], env)
                        if server:
                            m.update(server.end())
                        shutil.rmtree(out, ignore_errors=True)
                        results.setdefault(label, {}).setdefault(name, []).append(m)
                        extra = ""
                        if server:
                            cpu = m["server_cpu"]
                            extra = (
                                f", {m['requests']} requests, {m['bytes'] / 1e6:.0f} MB on the wire, "
                                f"{m['connections']} connections"
                                + (f", link CPU {cpu:.2f}s" if cpu is not None else "")
                            )
                        print(
                            f"  {label:6s} {name:6s} run {r + 1}: {m['wall']:.2f}s, CPU {m['cpu']:.2f}s, "
                            f"{m['rss']:.0f} MB{extra} (load {os.getloadavg()[0]:.1f})",
                            flush=True,
                        )
            if args.shard and "shaped" in sources and "worker" in only:
                shard = shard_of(sources["shaped"], args.shard, work / "shard")
                every = set(os.sched_getaffinity(0))
                pins = {len(every): every, 1: {min(every)}} if len(every) > 1 else {1: every}
                # the 'before' tree too when it runs (interleaved), so the steady state has a before/after
                shard_contenders = [c for c in ("before", "worker") if c in only]
                for r in range(args.repeats):
                    for ncpu, pin in pins.items():
                        for name in shard_contenders:
                            out = work / f"shard-{name}-{ncpu}-{r}"
                            servers["shaped"].begin()
                            m = measure(
                                commands(shard / "x.json", out, args.before_tree)[name], env, cpus=pin
                            )
                            m.update(servers["shaped"].end())
                            shutil.rmtree(out, ignore_errors=True)
                            if name == "worker":
                                steady.setdefault(ncpu, []).append(m)
                            else:
                                steady_before.setdefault(ncpu, []).append(m)
                            print(
                                f"  {name} shard of {args.shard} on {ncpu} CPU(s) run {r + 1}: "
                                f"{m['wall'] / args.shard:.2f}s per scene, CPU {m['cpu'] / args.shard:.2f}s per scene, "
                                f"{m['rss']:.0f} MB, {m['requests']} requests (load {os.getloadavg()[0]:.1f})",
                                flush=True,
                            )
        finally:
            for server in servers.values():
                server.stop()

    load1 = os.getloadavg()
    print(
        f"\n{args.size} x {args.size} scene, {args.repeats} interleaved runs: median wall (min-max), CPU seconds "
        f"(median), peak RSS (max); load average {load0[0]:.1f} before, {load1[0]:.1f} after; shaped link "
        f"{args.latency_ms:g} ms per request, {args.rate_mbps:g} MB/s per connection\n"
    )
    print("| source | contender | wall | CPU | peak RSS | HTTP requests | bytes on the wire | link CPU |")
    print("|---|---|---|---|---|---|---|---|")
    med: dict[str, dict[str, float]] = {}
    for label, by_name in results.items():
        for name, runs in by_name.items():
            walls = [m["wall"] for m in runs]
            w = statistics.median(walls)
            med.setdefault(label, {})[name] = w
            reqs = f"{statistics.median(m['requests'] for m in runs):.0f}" if "requests" in runs[0] else "-"
            wire = (
                f"{statistics.median(m['bytes'] for m in runs) / 1e6:.0f} MB" if "bytes" in runs[0] else "-"
            )
            cpus = [m.get("server_cpu") for m in runs if m.get("server_cpu") is not None]
            link = f"{statistics.median(cpus):.2f} s" if cpus else "-"
            print(
                f"| {label} | {name} | {w:.2f} s ({min(walls):.2f}-{max(walls):.2f}) | "
                f"{statistics.median(m['cpu'] for m in runs):.2f} s | {max(m['rss'] for m in runs):.0f} MB | "
                f"{reqs} | {wire} | {link} |"
            )

    for contender in [c for c in ("staging", "before", "worker") if c in only]:
        print(
            f"\n{contender} phases (median wall / process CPU seconds; start-up = CPU outside the phases):\n"
        )
        print("| source | " + " | ".join(("open", "chunks", "cog", "quicklook", "start-up etc.")) + " |")
        print("|---|---|---|---|---|---|")
        for label, by_name in results.items():
            runs = by_name[contender]
            phases = [worker_phases(m["stdout"]) for m in runs]
            cells = []
            for phase in ("open", "chunks", "cog", "quicklook"):
                vals = [p[phase] for p in phases if phase in p]
                cells.append(
                    f"{statistics.median(v[0] for v in vals):.2f} / {statistics.median(v[1] for v in vals):.2f}"
                    if vals
                    else "-"
                )
            rest = [m["cpu"] - sum(c for _, c in p.values()) for m, p in zip(runs, phases, strict=True) if p]
            cells.append(f"{statistics.median(rest):.2f} CPU" if rest else "-")
            print(f"| {label} | " + " | ".join(cells) + " |")

    if {"before", "worker"} <= set(only):
        print("\n| source | worker vs before: wall | CPU |")
        print("|---|---|---|")
        for label, by_name in results.items():
            cpu = {n: statistics.median(m["cpu"] for m in by_name[n]) for n in ("before", "worker")}
            print(
                f"| {label} | {med[label]['before'] / med[label]['worker']:.2f}x faster "
                f"({med[label]['before']:.2f} -> {med[label]['worker']:.2f} s) | "
                f"{cpu['before']:.2f} -> {cpu['worker']:.2f} s ({cpu['worker'] - cpu['before']:+.2f} s) |"
            )

    if {"naive", "worker"} <= set(only):
        print("\n| source | worker vs naive | worker / floor |")
        print("|---|---|---|")
        for label, m in med.items():
            floor = f"{m['worker'] / m['floor']:.2f}x" if "floor" in m else "-"
            print(f"| {label} | {m['naive'] / m['worker']:.2f}x faster | {floor} |")
        goals = []
        if "local" in med:
            goals.append(
                f"local: worker vs naive {med['local']['naive'] / med['local']['worker']:.2f}x (goal >= 4)"
            )
        if "shaped" in med:
            s = med["shaped"]
            goals.append(f"shaped: worker vs naive {s['naive'] / s['worker']:.2f}x (goal >= 5)")
            if "http" in med:
                goals.append(
                    f"shaped / zero-latency worker {s['worker'] / med['http']['worker']:.2f}x (goal <= 1.1)"
                )
        rss = max(m["rss"] for by in results.values() for m in by.get("worker", []))
        goals.append(f"worker peak RSS {rss:.0f} MB (goal <= 1024)")
        print("\ngoals: " + "; ".join(goals))

    sys.path.insert(0, str(ROOT))
    from launcher.ndvi.plan import DEFAULT_STARTUP_SECONDS, PRICES_USD_PER_HOUR

    price = PRICES_USD_PER_HOUR[INSTANCE_TYPE]
    if "shaped" in med and "worker" in med["shaped"]:
        t = med["shaped"]["worker"]
        p = projection(t, DEFAULT_STARTUP_SECONDS, price)
        print(
            f"\nplanetary job projected from the shaped link ({t:.2f} s per scene, one scene at a time, start-up "
            f"included): {PLANETARY_SCENES} scenes / ({JOBS} jobs x {INSTANCES_PER_JOB} {INSTANCE_TYPE}) = "
            f"{p['per_instance']} scenes on the busiest instance -> {p['wall_s'] / 60:.1f} min of processing, "
            f"{p['wall_with_startup_s'] / 60:.1f} min with the launcher's {DEFAULT_STARTUP_SECONDS:.0f} s job "
            f"start-up; {p['instance_hours']:.1f} instance-hours, ${p['cost_usd']:.2f} at ${price}/h; "
            f"{p['scenes_per_s']:.1f} scenes/s (targets: < 20 min, <= 167 instance-hours, >= 7 scenes/s)"
        )

    if steady:
        print(
            f"\nsteady state: the worker (defaults) on a shard of {args.shard} scenes over the shaped link, "
            "median of the runs; wall and CPU per scene include the process's start-up, shared by the shard:\n"
        )
        print("| CPUs | wall per scene | CPU per scene | peak RSS | requests per scene |")
        print("|---|---|---|---|---|")
        per_scene = {}
        for ncpu, runs in sorted(steady.items(), reverse=True):
            per_scene[ncpu] = statistics.median(m["wall"] for m in runs) / args.shard
            print(
                f"| {ncpu} | {per_scene[ncpu]:.2f} s | {statistics.median(m['cpu'] for m in runs) / args.shard:.2f} s "
                f"| {max(m['rss'] for m in runs):.0f} MB | "
                f"{statistics.median(m['requests'] for m in runs) / args.shard:.0f} |"
            )
        for ncpu, runs in sorted(steady_before.items(), reverse=True):
            print(
                f"| {ncpu} (before) | {statistics.median(m['wall'] for m in runs) / args.shard:.2f} s | "
                f"{statistics.median(m['cpu'] for m in runs) / args.shard:.2f} s | {max(m['rss'] for m in runs):.0f} MB | "
                f"{statistics.median(m['requests'] for m in runs) / args.shard:.0f} |"
            )
        top = max(per_scene)
        scaling = per_scene[1] / per_scene[top] if top > 1 and 1 in per_scene else None
        if scaling:
            print(f"\nscaling 1 -> {top} CPUs: {scaling:.2f}x ({scaling / top:.0%} of linear)")
        print(
            f"\nplanetary job from the steady state ({PLANETARY_SCENES} scenes, {INSTANCE_TYPE} at ${price}/h, "
            f"{DEFAULT_STARTUP_SECONDS:.0f} s start-up per job; reference run: 500 instances, < 20 min, <= 167 "
            "instance-hours; target: <= 14 instance-hours, 12x fewer):\n"
        )
        print("| projection | s per scene per instance | instances | instance-hours | cost | wall |")
        print("|---|---|---|---|---|---|")
        for what, t, n, hours, cost, minutes in projection_rows(
            per_scene[top], scaling, DEFAULT_STARTUP_SECONDS, price
        ):
            print(f"| {what} | {t:.2f} s | {n} | {hours:.1f} | ${cost:.2f} | {minutes:.1f} min |")

    sizes = [int(x) for x in args.memory_sizes.split(",") if x.strip()]
    if sizes and "worker" in only:
        print("\nworker peak RSS against scene size (local files, one run each):\n")
        print("| scene | worker | RSS worker |")
        print("|---|---|---|")
        with tempfile.TemporaryDirectory(prefix="bench-worker-mem-") as tmp:
            for size in [*sizes, args.size]:
                item = ensure_scene(size)
                out = Path(tmp) / str(size)
                cmd = [PY, "-m", "ndvi_worker", "--input", str(item.parent), "--output", str(out),
                       "--log-level", "WARNING"]  # fmt: skip
                m = measure(cmd, env)
                print(f"| {size} x {size} | {m['wall']:.2f} s | {m['rss']:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
