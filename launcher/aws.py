"""The AWS edge shared by both workflows: boto3 clients with adaptive retries and a client-side rate limit, the
one S3 URI type, the S3 endpoint lookup, the one SageMaker SDK `LocalSession` builder, and the SageMaker naming
rules every request builder checks (job/endpoint names, role ARNs).

Every AWS call of the launcher goes through `client()`. Endpoints come from the standard environment variables
(`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>`, honoured natively by boto3 >= 1.28), so every command works
against a local moto server. boto3 and sagemaker are imported lazily so `launcher --help` stays instant.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from launcher.errors import ArgumentError, RequestError

DEFAULT_MAX_ATTEMPTS = (
    10  # retries after the first attempt (botocore's `max_attempts`); override EARTHMON_AWS_MAX_ATTEMPTS
)
# Requests per second, per process, to the control-plane services: SageMaker's Create*/Describe*/List* and Service
# Quotas throttle at a few TPS per account; staying under that keeps adaptive retries for real congestion. Override
# with EARTHMON_AWS_MAX_RPS (0: no limit). S3 and the endpoint runtime have no client-side limit: S3 serves
# thousands of requests per second per prefix and answers SlowDown (503) when it needs to, which the adaptive
# retries back off from (at 4/s, copying the item JSONs of the 8,581-scene reference run took 36 minutes).
DEFAULT_MAX_RPS = 4.0
RATE_LIMITED_SERVICES = frozenset({"sagemaker", "sagemaker-geospatial", "service-quotas"})


class RateLimiter:
    """A thread-safe token bucket: at most `rate` acquisitions per second, bursts of up to `burst`."""

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, sleeping until one is available. Returns the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1.0
            wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
        if wait > 0:
            self._sleep(wait)
        return wait


@functools.cache
def session() -> Any:
    """The process's boto3 session (credentials and region resolved once, the standard way)."""
    import boto3

    return boto3.Session()


def reset_session() -> None:
    """Forget the cached session (tests change the environment between runs)."""
    session.cache_clear()
    _limiters.clear()


_limiters: dict[str, RateLimiter] = {}
_limiters_lock = threading.Lock()


def _limiter(service: str, max_rps: float) -> RateLimiter:
    # One bucket per service and process, shared by all clients of that service: the limit is the account's.
    with _limiters_lock:
        limiter = _limiters.get(service)
        if limiter is None or limiter.rate != max_rps:
            limiter = _limiters[service] = RateLimiter(max_rps, burst=max(1, int(max_rps)))
        return limiter


def _env_number(name: str, default: float, integer: bool = False) -> float:
    """A number >= 0 from the environment (``default`` when unset); anything else is a usage error that names
    the variable."""
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = -1
    if not (0 <= value < float("inf")):
        what = "an integer" if integer else "a number"
        raise ArgumentError(f"{name}={text[:40]!r}: expected {what} >= 0; fix or unset it")
    return value


def client(
    service: str, *, region: str | None = None, max_attempts: int | None = None, max_rps: float | None = None
):
    """A boto3 client with adaptive retries (throttling backs off and retries) and, for the control-plane
    services (`RATE_LIMITED_SERVICES`), a client-side rate limit shared by the process.

    The limiter runs before every HTTP attempt, retries included.
    """
    from botocore.config import Config

    attempts = max_attempts or int(
        _env_number("EARTHMON_AWS_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, integer=True)
    )
    control_plane_rps = _env_number("EARTHMON_AWS_MAX_RPS", DEFAULT_MAX_RPS)  # checked for every client
    if max_rps is not None:
        rps = max_rps
    elif service in RATE_LIMITED_SERVICES:
        rps = control_plane_rps
    else:
        rps = 0.0
    config = Config(
        retries={"mode": "adaptive", "max_attempts": attempts},
        user_agent_extra="earthmon-launcher",
    )
    c = session().client(service, region_name=region, config=config)
    if rps > 0:
        limiter = _limiter(service, rps)

        def _throttle(**_: Any) -> None:
            limiter.acquire()  # returns None: the request goes on

        c.meta.events.register_first("before-send", _throttle)
    return c


def region_name() -> str | None:
    return session().region_name


def s3_endpoint_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The S3 endpoint the standard variables name (`AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`), or None. boto3
    reads them itself; this is for what does not (SageMaker SDK local mode's S3 client)."""
    env = os.environ if environ is None else environ
    return env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None


# ------------------------------------------------------------------------------------------ SageMaker rules

# Job, tuning job, model, endpoint config and endpoint names (the API's pattern; the length differs per API).
JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
ROLE_ARN = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$")
ROLE_ARN_MAX = 2048


def is_job_name(name: object, max_length: int = 63) -> bool:
    return isinstance(name, str) and len(name) <= max_length and bool(JOB_NAME.match(name))


def check_name(name: str, max_length: int = 63, what: str = "name") -> str:
    """`name` when SageMaker accepts it as a job/endpoint name of at most `max_length` characters, else
    RequestError."""
    if not is_job_name(name, max_length):
        raise RequestError(
            f"invalid {what} {name!r}: 1-{max_length} letters, digits and hyphens, starting and ending with a "
            "letter or digit"
        )
    return name


def is_role_arn(arn: object) -> bool:
    return isinstance(arn, str) and len(arn) <= ROLE_ARN_MAX and bool(ROLE_ARN.match(arn))


def role_arn_problem(arn: object, what: str = "RoleArn") -> str | None:
    """Why `arn` is not an IAM role ARN SageMaker accepts (None when it is)."""
    if is_role_arn(arn):
        return None
    return f"{what} must be an IAM role ARN (arn:aws:iam::123456789012:role/NAME), got {arn!r}"


def check_role(arn: str, what: str = "--role") -> str:
    problem = role_arn_problem(arn, what)
    if problem:
        raise RequestError(problem)
    return arn


# ----------------------------------------------------------------------------------------------- S3 helpers


# S3 URLs of objects as STAC items write them: virtual-hosted and path style.
_VHOST = re.compile(r"^https?://([a-z0-9][a-z0-9.\-]*?)\.s3(?:[.\-][a-z0-9\-]+)?\.amazonaws\.com/(.+)$")
_PATH = re.compile(r"^https?://s3(?:[.\-][a-z0-9\-]+)?\.amazonaws\.com/([a-z0-9][a-z0-9.\-]*)/(.+)$")


@dataclass(frozen=True)
class S3Uri:
    """The one S3 location type of the launcher: a bucket and a key (a prefix when it ends in '/')."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def uri(self) -> str:
        return str(self)

    @classmethod
    def from_url(cls, url: str) -> S3Uri | None:
        """`s3://b/k` or an S3 https URL (virtual-hosted or path style) of an object -> its location, else None."""
        if url.startswith("s3://"):
            bucket, _, key = url[5:].partition("/")
            return cls(bucket, key) if bucket and key else None
        m = _VHOST.match(url) or _PATH.match(url)
        return cls(m.group(1), m.group(2)) if m else None

    def join(self, *parts: str) -> S3Uri:
        key = self.key
        for part in parts:
            part = part.strip("/")
            if not part:
                continue
            key = f"{key.rstrip('/')}/{part}" if key else part
        return S3Uri(self.bucket, key)

    def as_prefix(self) -> S3Uri:
        """The same location as a folder prefix (ending in '/', or empty for the bucket root)."""
        return S3Uri(self.bucket, self.key.rstrip("/") + "/" if self.key.strip("/") else "")


def parse_s3_uri(uri: str) -> S3Uri:
    """`s3://bucket[/key]` -> S3Uri; ValueError for anything else."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an S3 URI (expected s3://bucket/key): {uri!r}")
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"S3 URI without a bucket: {uri!r}")
    return S3Uri(bucket, key)


def is_s3_uri(value: object, max_length: int | None = None, allow_https: bool = False) -> bool:
    """Whether `value` is an `s3://bucket[/key]` URI (a bucket, no white space, at most `max_length`
    characters); `allow_https`: also an `https://host/...` URL (what CreateProcessingJob's pattern admits)."""
    if not isinstance(value, str) or any(c.isspace() for c in value):
        return False
    if max_length is not None and len(value) > max_length:
        return False
    scheme = "https://" if allow_https and value.startswith("https://") else "s3://"
    return value.startswith(scheme) and bool(value[len(scheme) :].split("/", 1)[0])


def put_json(s3: Any, uri: S3Uri, obj: Any) -> None:
    body = json.dumps(obj, separators=(",", ":")).encode()
    s3.put_object(Bucket=uri.bucket, Key=uri.key, Body=body, ContentType="application/json")


def get_json(s3: Any, uri: S3Uri) -> Any:
    return json.loads(s3.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read())


def list_objects(s3: Any, prefix: S3Uri) -> Iterator[dict[str, Any]]:
    """Every object under a prefix (all pages)."""
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=prefix.bucket, Prefix=prefix.key):
        yield from page.get("Contents", [])


def list_prefixes(s3: Any, prefix: S3Uri) -> set[str]:
    """The names of the "folders" right under a prefix (all pages)."""
    paginator = s3.get_paginator("list_objects_v2")
    found = set()
    for page in paginator.paginate(Bucket=prefix.bucket, Prefix=prefix.key, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            found.add(common["Prefix"][len(prefix.key) :].strip("/"))
    return found


def is_not_found(error: Exception) -> bool:
    code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
    return code in {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


def short(message: str, limit: int = 200) -> str:
    """One line of an error message (HTML error pages from proxies or local servers reduced to their text)."""
    text = " ".join(re.sub(r"<[^>]+>", " ", message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_code(error: Exception) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


def error_message(error: Exception) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Message", error))
