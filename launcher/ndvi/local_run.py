"""Run a plan on this machine the way SageMaker Processing would.

Each simulated instance (`algo-1`..`algo-N`) gets its own `/opt/ml` tree: `processing/input` with its share of
the manifest's objects (split like ShardedByS3Key), `processing/output`, `config/resourceconfig.json` and
`config/processingjobconfig.json` (the CreateProcessingJob request), `output/message`. The processing image runs
once per instance with `docker run` (bind mounts, `--network host`), or, with `--no-docker`, the worker runs as
`python -m ndvi_worker` with `SAGEMAKER_BASE_DIR` pointing at the instance's tree (the same isolation). When the
instances exit, their outputs are copied to the job's output prefix. A job fails if any instance exits non-zero.

SageMaker SDK local mode cannot do ManifestFile, ShardedByS3Key or Continuous (docs/domain.md section 7), hence this
runner; `run_sdk_local` offers the profile local mode supports (S3Prefix, FullyReplicated, EndOfJob).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.aws import S3Uri, is_not_found, list_objects, parse_s3_uri
from launcher.errors import ArgumentError, PlanError
from launcher.ndvi.paths import inside
from launcher.ndvi.plan import BATCH_SUFFIX, JobPlan, Plan, ProductJob, Submission, manifest_uris
from launcher.ndvi.requests import INPUT_PATH, OUTPUT_PATH
from launcher.sdk_local import local_mode_scratch, local_session
from launcher.secrets import EnvOptions, redact_request
from ndvi_worker.contract import CONTAINER, DEFAULT_BASE_DIR

CONTAINER_BASE = DEFAULT_BASE_DIR
# An instance's tree, relative to its /opt/ml (ndvi_worker.contract): mounted one by one into the container.
TREE_DIRS = tuple(d.relative_to(CONTAINER.base).as_posix() for d in CONTAINER.tree_dirs())
DEFAULT_IMAGE = "earthmon-processing:dev"
DEFAULT_ROLE = "arn:aws:iam::000000000000:role/local"


# ------------------------------------------------------------------------------------------------ selection


def select_jobs(plan: Plan, job_names: Sequence[str] = (), round_: int | None = None) -> list[JobPlan]:
    """The jobs of the plan to run: those named (all when none) of the round given (all when None).
    ArgumentError for an unknown name or an empty selection."""
    unknown = set(job_names) - {j.name for j in plan.jobs}
    if unknown:
        raise ArgumentError(f"no such job(s) in the plan: {', '.join(sorted(unknown))[:300]}")
    jobs = [
        j
        for j in plan.jobs
        if (not job_names or j.name in job_names) and (round_ is None or j.round == round_)
    ]
    if not jobs:
        raise ArgumentError(f"no jobs selected (rounds of the plan: {plan.rounds})")
    return jobs


def check_volumes(volumes: Sequence[str]) -> None:
    for volume in volumes:
        if volume.count(":") not in (1, 2) or not all(volume.split(":")[:2]):
            raise ArgumentError(f"--volume takes HOST:CONTAINER[:ro], got {volume!r}")


def local_submission(plan: Plan, image: str | None, role: str = DEFAULT_ROLE) -> Submission:
    """What a local run uses: the plan's submission (recorded by `submit`), else the image given (or the dev
    image) with `role`; `image` replaces the plan's image."""
    submission = plan.submission or Submission(image=image or DEFAULT_IMAGE, role=role)
    return dataclasses.replace(submission, image=image) if image else submission


def secret_names(submission: Submission, options: EnvOptions) -> list[str]:
    """The variables whose values come from the caller (the plan's, then this command line's)."""
    return [
        *submission.env_from_caller,
        *(n for n in options.from_caller if n not in submission.env_from_caller),
    ]


# --------------------------------------------------------------------------------------------------- pure


def hosts(n: int) -> list[str]:
    if n < 1:
        raise ValueError(f"instances must be >= 1, got {n}")
    return [f"algo-{i}" for i in range(1, n + 1)]


def split_keys(uris: Sequence[str], n: int) -> list[list[str]]:
    """ShardedByS3Key as simulated here: the manifest's objects sorted by key, in contiguous runs whose sizes
    differ by at most one (AWS documents only 'about 1/n of the objects'; the workers find inputs recursively
    and treat an empty share as success, so any split works)."""
    ordered = sorted(uris)
    base, extra = divmod(len(ordered), n)
    out, start = [], 0
    for i in range(n):
        size = base + (1 if i < extra else 0)
        out.append(ordered[start : start + size])
        start += size
    return out


def resource_config(host: str, all_hosts: Sequence[str]) -> dict[str, Any]:
    return {"current_host": host, "hosts": list(all_hosts)}


def rebase_args(args: Sequence[str], base_dir: str) -> list[str]:
    """Container arguments with /opt/ml paths moved under a base dir (for the worker run as a process)."""
    out = []
    for arg in args:
        if arg == CONTAINER_BASE or arg.startswith(CONTAINER_BASE + "/"):
            arg = base_dir.rstrip("/") + arg[len(CONTAINER_BASE) :]
        out.append(arg)
    return out


def docker_argv(
    image: str,
    tree: str,
    environment: Mapping[str, str],
    args: Sequence[str],
    name: str | None = None,
    volumes: Sequence[str] = (),
    user: str | None = None,
) -> list[str]:
    """`docker run` for one simulated instance: its tree mounted at /opt/ml, host network, the image's
    ENTRYPOINT with the request's ContainerArguments appended (what SageMaker does).

    Environment variables are passed by name only (`-e NAME`): run the command with `environment` in the docker
    client's own environment (`docker_env`), so no value (a secret) is ever on a command line `ps` shows."""
    argv = ["docker", "run", "--rm", "--network", "host"]
    if name:
        argv += ["--name", name]
    if user:  # SageMaker runs images as root; as a non-root user, keep the tree's files yours
        argv += ["--user", user]
    for sub in TREE_DIRS:
        argv += ["-v", f"{os.path.abspath(os.path.join(tree, sub))}:{CONTAINER_BASE}/{sub}"]
    for volume in volumes:  # e.g. a local catalog the item hrefs point into
        argv += ["-v", volume]
    for key in sorted(environment):
        argv += ["-e", key]
    argv.append(image)
    argv += list(args)
    return argv


def docker_env(environment: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The docker client's environment for `docker_argv`: the caller's, plus the worker's variables."""
    return {**(os.environ if base is None else base), **environment}


def docker_problem(timeout: float = 20.0) -> str | None:
    """Why no Docker engine can run the image (None when `docker version` reaches a server)."""
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    try:
        proc = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker version failed ({exc})"
    if proc.returncode != 0 or not proc.stdout.strip():
        lines = [line for line in (proc.stderr or "").splitlines() if line.strip()]
        return lines[-1].strip()[:300] if lines else f"docker version exited {proc.returncode}"
    return None


def log_tail(path: str | os.PathLike[str], limit: int = 300) -> str:
    """The last non-empty line of a log (why an instance exited when it wrote no output/message)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


def local_assets(args: Sequence[str]) -> tuple[list[str], str | None]:
    """ContainerArguments without `--assets-root <url>` (a local run stages the COGs instead), and the url."""
    out: list[str] = []
    root = None
    it = iter(args)
    for a in it:
        if a == "--assets-root":
            root = next(it, "")
        elif a.startswith("--assets-root="):
            root = a.split("=", 1)[1]
        else:
            out.append(a)
    return out, root


def local_key(uri: str, prefix: str) -> str:
    """Where an object lands under LocalPath: its key relative to the manifest prefix."""
    return uri[len(prefix) :] if uri.startswith(prefix) else uri.split("/", 3)[-1]


# ----------------------------------------------------------------------------------------------------- I/O


@dataclass
class InstanceResult:
    host: str
    exit_code: int
    inputs: int
    outputs: int
    seconds: float
    message: str
    log: str


@dataclass
class LocalJobResult:
    job: str
    instances: list[InstanceResult] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "Completed" if all(i.exit_code == 0 for i in self.instances) else "Failed"


def _prepare_tree(tree: Path) -> None:
    for sub in TREE_DIRS:
        (tree / sub).mkdir(parents=True, exist_ok=True)


def stage_inputs(s3: Any, uris: Sequence[str], prefix: str, input_dir: Path) -> int:
    """Download the objects of one instance's share under its input dir, keys relative to the prefix."""
    for uri in uris:
        loc = parse_s3_uri(uri)
        dest = inside(input_dir, local_key(uri, prefix))  # a manifest key never leads out of the tree
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            s3.download_file(loc.bucket, loc.key, str(dest))
        except Exception as exc:
            if is_not_found(exc):
                raise PlanError(
                    f"{uri} is listed by the job's manifest but is not in S3 (or not readable with these "
                    "credentials and endpoint)"
                ) from None
            raise
    return len(uris)


def upload_outputs(
    s3: Any, output_dir: Path, output_uri: str, uploaded: dict[str, tuple[int, int]] | None = None
) -> int:
    """Upload the files under an instance's output dir that are new or changed since the last call (`uploaded`
    remembers size and mtime per file). Returns the number uploaded. Dot files (scratch) are skipped."""
    dest = parse_s3_uri(output_uri).as_prefix()
    seen = uploaded if uploaded is not None else {}
    n = 0
    for path in sorted(output_dir.rglob("*")):
        if (
            path.is_symlink()  # a link planted in the output would upload whatever it points at
            or not path.is_file()
            or any(part.startswith(".") for part in path.relative_to(output_dir).parts)
        ):
            continue
        stat = path.stat()
        rel = path.relative_to(output_dir).as_posix()
        if seen.get(rel) == (stat.st_size, stat.st_mtime_ns):
            continue
        s3.upload_file(str(path), dest.bucket, dest.key + rel)
        seen[rel] = (stat.st_size, stat.st_mtime_ns)
        n += 1
    return n


@dataclass
class _Running:
    host: str
    tree: Path
    proc: subprocess.Popen
    started: float
    inputs: int
    log: Any
    uploaded: dict[str, tuple[int, int]] = field(default_factory=dict)


def run_job(
    s3: Any,
    plan: Plan,
    job: JobPlan | ProductJob,
    request: Mapping[str, Any],
    workdir: Path,
    instances: int,
    *,
    docker: bool = True,
    image: str | None = None,
    python: str = sys.executable,
    extra_env: Mapping[str, str] | None = None,
    redact: Sequence[str] | None = None,
    volumes: Sequence[str] = (),
    parallel: int | None = None,
    upload_interval: float = 10.0,
    on_event: Callable[[str], None] | None = None,
) -> LocalJobResult:
    """Run one job of the plan locally: each instance starts from a fresh tree (like a new SageMaker instance),
    gets its share staged (all of the manifest when the request's input is FullyReplicated) and runs; like Continuous upload, new output files are copied to the job's output
    prefix every `upload_interval` seconds while it runs, and once more when it exits. At most `parallel`
    instances run at once (default: all, as on SageMaker). `redact`: names whose values are secrets (kept out of
    the files written into the trees)."""
    say = on_event or (lambda _msg: None)
    manifest_loc = parse_s3_uri(job.manifest_uri)
    try:
        manifest = json.loads(s3.get_object(Bucket=manifest_loc.bucket, Key=manifest_loc.key)["Body"].read())
    except Exception as exc:
        if is_not_found(exc):
            raise PlanError(
                f"the manifest {job.manifest_uri} is not in S3 (planned with --no-upload?): run `launcher plan` "
                "again without --no-upload (and --force), then `launcher local`"
            ) from None
        raise
    if (
        not isinstance(manifest, list)
        or not manifest
        or not isinstance(manifest[0], dict)
        or not isinstance(manifest[0].get("prefix"), str)
        or not all(isinstance(k, str) for k in manifest[1:])
    ):
        raise PlanError(
            f'the manifest {job.manifest_uri} is not a ManifestFile ([{{"prefix": "s3://..."}}, "key", ...]): '
            "plan the run again"
        )
    uris = manifest_uris(manifest)
    prefix = manifest[0]["prefix"]
    for uri in uris:
        if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
            raise PlanError(f"the manifest {job.manifest_uri} lists {uri[:80]!r}, not an s3:// URI")
    args = list(request.get("AppSpecification", {}).get("ContainerArguments", []))
    args, assets_root = local_assets(args)
    if assets_root is not None:
        # the mosaic reads its COGs in place on SageMaker (--assets-root s3://...); a local run has no S3 endpoint
        # or credentials inside the container, so it stages each item's COG beside it (<stem>.json ->
        # <stem>.tif, the worker's and the composites' layout) and reads local files, as before
        uris = sorted({*uris, *(u[: -len(".json")] + ".tif" for u in uris if u.endswith(".json"))})
    all_hosts = hosts(instances)
    distribution = (
        (request.get("ProcessingInputs") or [{}])[0].get("S3Input", {}).get("S3DataDistributionType")
    )
    # FullyReplicated (stage 2): every instance gets the whole manifest
    shares = [sorted(uris)] * instances if distribution == "FullyReplicated" else split_keys(uris, instances)
    pending = list(zip(all_hosts, shares, strict=True))
    job_dir = inside(workdir, job.name)
    environment = dict(request.get("Environment", {}))
    if extra_env:
        environment.update(extra_env)
    limit = max(1, parallel or instances)

    secret_names = list(redact or ())

    def start(host: str, share: list[str]) -> _Running:
        tree = inside(job_dir, host)
        shutil.rmtree(tree, ignore_errors=True)  # a fresh instance: no inputs or outputs of an earlier run
        _prepare_tree(tree)
        inputs = stage_inputs(s3, share, prefix, tree / "processing" / "input")
        (tree / "config" / "resourceconfig.json").write_text(json.dumps(resource_config(host, all_hosts)))
        # the request as SageMaker would hand it over, minus secret values (they are only in the process env)
        config = redact_request(request, secret_names)
        (tree / "config" / "processingjobconfig.json").write_text(json.dumps(config, indent=1))
        log = open(tree / "worker.log", "wb")  # noqa: SIM115 (closed when the process is reaped)
        if docker:
            argv = docker_argv(
                image or request["AppSpecification"]["ImageUri"],
                str(tree),
                environment,
                args,
                volumes=volumes,
                user=None if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}",
            )
            env = docker_env(environment)  # values by environment, never on the command line
        else:
            argv = [python, "-m", "ndvi_worker", *rebase_args(args, str(tree))]
            env = {**os.environ, **environment, "SAGEMAKER_BASE_DIR": str(tree)}
        say(f"{job.name} {host}: {inputs} item(s), {' '.join(argv[:3])} ...")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        return _Running(host, tree, proc, time.monotonic(), inputs, log)

    def finish(run: _Running) -> InstanceResult:
        code = run.proc.wait()
        run.log.close()
        seconds = time.monotonic() - run.started
        message_file = run.tree / "output" / "message"
        message = message_file.read_text(errors="replace")[:1024] if message_file.is_file() else ""
        if (
            code != 0 and not message.strip()
        ):  # e.g. docker itself failed (exit 125): its reason is in the log
            message = log_tail(run.tree / "worker.log")
        upload_outputs(s3, run.tree / "processing" / "output", plan.job_output_uri(job), run.uploaded)
        outputs = len(run.uploaded)
        say(f"{job.name} {run.host}: exit {code} after {seconds:.1f} s, {outputs} output file(s) uploaded")
        return InstanceResult(
            run.host, code, run.inputs, outputs, seconds, message, str(run.tree / "worker.log")
        )

    result = LocalJobResult(job=job.name)
    running: list[_Running] = []
    last_upload = time.monotonic()
    try:
        while pending or running:
            while pending and len(running) < limit:
                running.append(start(*pending.pop(0)))
            ended = next((r for r in running if r.proc.poll() is not None), None)
            if ended is None:
                if time.monotonic() - last_upload >= upload_interval:
                    for run in running:
                        upload_outputs(
                            s3, run.tree / "processing" / "output", plan.job_output_uri(job), run.uploaded
                        )
                    last_upload = time.monotonic()
                time.sleep(0.1)
                continue
            running.remove(ended)
            result.instances.append(finish(ended))
    finally:
        for run in running:  # interrupted: stop what still runs
            run.proc.terminate()
            run.proc.wait()
            run.log.close()
    result.instances.sort(key=lambda i: all_hosts.index(i.host))
    status_file = job_dir / "local-status.json"
    if status_file.is_file():  # the previous run's status is kept next to the new one
        os.replace(status_file, job_dir / "local-status.previous.json")
    status_file.write_text(
        json.dumps(
            {"job": job.name, "status": result.status, "instances": [i.__dict__ for i in result.instances]},
            indent=1,
        )
    )
    return result


# -------------------------------------------------------------------------------------------- SDK local mode


def sdk_local_arguments(plan: Plan, job: JobPlan, input_uri: str, image: str, role: str) -> dict[str, Any]:
    """The Processor and run() arguments for SageMaker SDK local mode's supported profile (pure)."""
    return {
        "processor": {
            "role": role,
            "image_uri": image,
            "instance_count": 1,
            "instance_type": "local",
        },
        "inputs": [
            {
                "source": input_uri,
                "destination": INPUT_PATH,
                "input_name": "items",
                "s3_data_type": "S3Prefix",
                "s3_data_distribution_type": "FullyReplicated",
            }
        ],
        "outputs": [
            {
                "source": OUTPUT_PATH,
                "destination": plan.job_output_uri(job),
                "output_name": "ndvi",
                "s3_upload_mode": "EndOfJob",
            }
        ],
    }


def stage_sdk_input(s3: Any, job: JobPlan, plan: Plan) -> str:
    """Copy the job's item JSONs under one S3 prefix (local mode reads S3Prefix inputs, not manifests)."""
    dest = parse_s3_uri(plan.s3_prefix).join("sdk-local", job.name).as_prefix()
    for stale in list_objects(
        s3, dest
    ):  # a previous staging of this job (e.g. before its items were batched)
        s3.delete_object(Bucket=dest.bucket, Key=stale["Key"])
    names = {s.uri: f"{s.item_id}.json" for s in job.scenes}  # an item in place: its id names it
    for uri in names:  # a batch of copied items once, under its own name
        src = parse_s3_uri(uri)
        name = src.key.rsplit("/", 1)[-1] if uri.endswith(BATCH_SUFFIX) else names[uri]
        s3.copy_object(
            Bucket=dest.bucket, Key=dest.key + name, CopySource={"Bucket": src.bucket, "Key": src.key}
        )
    return str(dest)


def run_sdk_local(
    s3: Any, plan: Plan, job: JobPlan, image: str, role: str, environment: Mapping[str, str] | None = None
) -> None:  # pragma: no cover - needs Docker and docker compose (the container tests run it)
    """Run one job through SageMaker SDK local mode (one instance, S3Prefix, FullyReplicated, EndOfJob)."""
    from sagemaker.processing import ProcessingInput, ProcessingOutput, Processor

    input_uri = stage_sdk_input(s3, job, plan)
    spec = sdk_local_arguments(plan, job, input_uri, image, role)
    with local_mode_scratch() as scratch:
        # no ContainerArguments: local mode raises KeyError on arguments without an entrypoint (docs/domain.md section 7);
        # the worker's defaults are the contract paths
        processor = Processor(
            sagemaker_session=local_session(scratch), env=dict(environment or {}) or None, **spec["processor"]
        )
        processor.run(
            inputs=[ProcessingInput(**i) for i in spec["inputs"]],
            outputs=[ProcessingOutput(**o) for o in spec["outputs"]],
            wait=True,
            logs=True,
        )


def output_files(s3: Any, uri: str) -> list[str]:
    prefix = parse_s3_uri(uri).as_prefix()
    return [o["Key"] for o in list_objects(s3, S3Uri(prefix.bucket, prefix.key))]
