"""AWS edge: boto3 clients with adaptive retries and a client-side rate limit, plus small S3 helpers.

Every AWS call of the launcher goes through `client()`. Endpoints come from the standard environment variables
(`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>`, honoured natively by boto3 >= 1.28), so every command works
against a local moto server. boto3 is imported lazily so `launcher --help` stays instant.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_ATTEMPTS = (
    10  # retries after the first attempt (botocore's `max_attempts`); override EARTHMON_AWS_MAX_ATTEMPTS
)
# Requests per second per client. SageMaker's control-plane APIs throttle at a few TPS per account; staying
# under that keeps adaptive retries for real congestion. Override with EARTHMON_AWS_MAX_RPS.
DEFAULT_MAX_RPS = 4.0


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


def client(
    service: str, *, region: str | None = None, max_attempts: int | None = None, max_rps: float | None = None
):
    """A boto3 client with adaptive retries (throttling backs off and retries) and a client-side rate limit.

    The limiter runs before every HTTP attempt, retries included.
    """
    from botocore.config import Config

    attempts = max_attempts or int(os.environ.get("EARTHMON_AWS_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS))
    rps = max_rps if max_rps is not None else float(os.environ.get("EARTHMON_AWS_MAX_RPS", DEFAULT_MAX_RPS))
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


# ----------------------------------------------------------------------------------------------- S3 helpers


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

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
    if not uri.startswith("s3://"):
        raise ValueError(f"not an S3 URI (expected s3://bucket/key): {uri!r}")
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"S3 URI without a bucket: {uri!r}")
    return S3Uri(bucket, key)


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


def is_not_found(error: Exception) -> bool:
    code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
    return code in {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


def error_code(error: Exception) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


def error_message(error: Exception) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Message", error))
