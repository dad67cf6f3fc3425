"""The worker's typed configuration, built once at the boundary (CLI) and passed down. Rejects unknown keys."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ndvi_worker.ndvi import DEFAULT_MASK_CLASSES

COMPRESSIONS = ("ZSTD", "DEFLATE", "LZW", "LERC_ZSTD", "NONE")
#: Compression levels GDAL accepts, per compression (LZW and NONE have none).
LEVELS = {"ZSTD": (1, 22), "DEFLATE": (1, 12), "LERC_ZSTD": (1, 22)}
SCHEDULER_SCHEMES = ("tcp", "tls", "ucx", "ws", "wss", "inproc")
MAX_CHUNK = 16384
#: Range requests in flight per scene (I/O threads, each with its own connection). Measured on a link adding
#: 30 ms per request at 60 MB/s per connection (README "Performance"): 4 leaves the worker waiting, 8 is within
#: a few % of a zero-latency link on 2 cores, 16 also covers the 4 vCPU of an ml.m5.xlarge and S3's slower
#: requests; more only adds connections and memory (each read holds one decoded 1024 x 1024 block).
DEFAULT_READ_CONCURRENCY = 16
MAX_READ_CONCURRENCY = 128


@dataclass(frozen=True)
class WorkerConfig:
    input_dir: Path
    output_dir: Path
    mask_classes: tuple[int, ...] = DEFAULT_MASK_CLASSES
    boa_offset: str = "auto"
    overwrite: bool = False
    on_error: str = "continue"
    workers: int = 2
    scenes_in_flight: int = 2
    read_concurrency: int = DEFAULT_READ_CONCURRENCY
    scheduler: str | None = None
    dtype: str = "int16"
    compress: str = "ZSTD"
    level: int | None = 1
    predictor: int | None = None
    max_z_error: float | None = None
    blocksize: int = 512
    chunk_size: int = 1024
    quicklook: bool = True
    staging_dir: Path | None = None
    retries: int = 4

    def __post_init__(self) -> None:
        problems = []
        if self.boa_offset not in ("auto", "apply", "skip"):
            problems.append(f"boa_offset must be auto, apply or skip, not {self.boa_offset!r}")
        if self.on_error not in ("continue", "fail"):
            problems.append(f"on_error must be continue or fail, not {self.on_error!r}")
        if self.dtype not in ("int16", "float32"):
            problems.append(f"dtype must be int16 or float32, not {self.dtype!r}")
        if self.compress not in COMPRESSIONS:
            problems.append(f"compress must be one of {', '.join(COMPRESSIONS)}, not {self.compress!r}")
        if self.compress.startswith("LERC") and self.dtype != "float32":
            problems.append("LERC compression needs --dtype float32")
        if self.workers < 1 or self.scenes_in_flight < 1:
            problems.append("workers and scenes_in_flight must be at least 1")
        rc = self.read_concurrency
        if isinstance(rc, bool) or not isinstance(rc, int) or not 1 <= rc <= MAX_READ_CONCURRENCY:
            problems.append(f"read_concurrency must be an integer from 1 to {MAX_READ_CONCURRENCY}")
        if self.blocksize < 64 or self.blocksize > 4096 or self.blocksize % 16:
            problems.append("blocksize must be a multiple of 16 from 64 to 4096")
        if self.chunk_size > MAX_CHUNK:
            problems.append(f"chunk_size must be at most {MAX_CHUNK} (memory grows with its square)")
        elif self.chunk_size < self.blocksize or self.chunk_size % self.blocksize:
            problems.append(f"chunk_size must be a multiple of blocksize ({self.blocksize})")
        if self.chunk_size % 2:
            problems.append("chunk_size must be even (SCL pixels cover 2 x 2 10 m pixels)")
        if any(not 0 <= c <= 255 for c in self.mask_classes):
            problems.append("mask classes must lie in 0-255")
        if self.retries < 1:
            problems.append("retries must be at least 1")
        low_high = LEVELS.get(self.compress)
        if self.level is not None and low_high and not low_high[0] <= self.level <= low_high[1]:
            problems.append(
                f"level for {self.compress} must lie in {low_high[0]}-{low_high[1]}, not {self.level}"
            )
        if self.max_z_error is not None and not 0 <= self.max_z_error < float("inf"):
            problems.append("max_z_error must be a finite number >= 0")
        if self.scheduler is not None:
            problem = scheduler_problem(self.scheduler)
            if problem:
                problems.append(problem)
        if problems:
            raise ValueError("invalid worker configuration: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict) -> WorkerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown worker configuration keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        values = dict(data)
        for key in ("input_dir", "output_dir", "staging_dir"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        if "mask_classes" in values:
            values["mask_classes"] = tuple(int(c) for c in values["mask_classes"])
        return cls(**values)

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in ("input_dir", "output_dir", "staging_dir"):
            if out[key] is not None:
                out[key] = str(out[key])
        out["mask_classes"] = list(self.mask_classes)
        return out


def scheduler_problem(address: str) -> str | None:
    """Why a dask scheduler address is malformed (``tcp://host:8786`` is expected), or None."""
    from urllib.parse import urlsplit

    from ndvi_worker.safety import shown

    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in SCHEDULER_SCHEMES:
        return (
            f"scheduler address {shown(address)!r} is not a dask scheduler address: use tcp://host:8786 "
            f"(schemes: {', '.join(SCHEDULER_SCHEMES)})"
        )
    if parts.scheme in ("tcp", "tls") and (not parts.hostname or not port):
        return f"scheduler address {shown(address)!r} needs a host and a port, e.g. tcp://10.0.0.5:8786"
    return None


def parse_mask_classes(text: str) -> tuple[int, ...]:
    """``'0,1,3,8,9,10'`` -> (0, 1, 3, 8, 9, 10); an empty string masks only SCL 0 (no data)."""
    text = text.strip()
    if not text:
        return ()
    try:
        classes = tuple(sorted({int(p) for p in text.split(",") if p.strip()}))
    except ValueError as exc:
        raise ValueError(f"mask classes must be comma-separated integers, got {text!r}") from exc
    bad = [c for c in classes if not 0 <= c <= 11]
    if bad:
        raise ValueError(f"SCL classes run from 0 to 11; got {bad}")
    return classes
