"""What every command shares: the console, JSON output, the one mapping from errors to messages and exit
statuses, and option helpers. Only click (and rich, inside the functions) here: `launcher --help` stays instant."""

from __future__ import annotations

import functools
import gc
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import click

from launcher.errors import ArgumentError, PlanError, PredictError, RequestError, ResponseError, SubmitError

# The one place errors become exit statuses (like titiler's exception handlers): usage errors exit 2 with click's
# usage line, the others 1 with their message; anything else is `one_line`.
USAGE_ERRORS: tuple[type[Exception], ...] = (
    ArgumentError,
    RequestError,
)  # RequestError: the options' request
FAILURES: tuple[type[Exception], ...] = (PlanError, SubmitError, PredictError, ResponseError)
PASSED_THROUGH = (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit, KeyboardInterrupt)


def console(stderr: bool = True):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def as_click_error(exc: BaseException) -> BaseException:
    """The click exception `exc` becomes (itself when click handles it already)."""
    if isinstance(exc, PASSED_THROUGH):
        return exc
    if isinstance(exc, USAGE_ERRORS):
        return click.UsageError(str(exc))
    if isinstance(exc, FAILURES):
        return click.ClickException(str(exc))
    if isinstance(exc, Exception):
        return one_line(exc)
    return exc


def gc_paused(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A command run with the cyclic garbage collector off, back on after. For commands that hold every item of a
    run: each collection re-walked all their decoded dicts and lists (which survive, and make no cycles).
    `launcher plan` of the reference run's 8,581 real-size items (179 MB) spent a third of its time there."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return wrapper


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every failure into one clear line with what to do, instead of a traceback: argument problems exit 2
    (usage), everything else 1. An unexpected error still gets one line (EARTHMON_DEBUG=1 shows the traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PASSED_THROUGH:
            raise
        except Exception as exc:
            raise as_click_error(exc) from None

    return wrapper


def one_line(exc: Exception) -> click.ClickException:
    """The one line an unexpected failure becomes: an AWS hint, the OS error with its file, else the error itself
    (EARTHMON_DEBUG=1 re-raises it, for the traceback)."""
    hint = aws_hint(exc)
    if hint is not None:
        return click.ClickException(hint)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return click.ClickException(f"{exc.strerror or exc}{where}")
    if os.environ.get("EARTHMON_DEBUG"):
        raise exc
    text = " ".join(str(exc).split())[:300]
    return click.ClickException(
        f"unexpected error ({type(exc).__name__}: {text}); run again with EARTHMON_DEBUG=1 for the traceback "
        "and report it"
    )


def aws_hint(exc: Exception) -> str | None:
    """What to do about a botocore/boto3 error (region, credentials, endpoint, quota, bucket, permissions), or None
    for other errors."""
    if not type(exc).__module__.startswith(("botocore", "boto3")):
        return None
    name = type(exc).__name__
    if name == "NoRegionError":
        import botocore

        # botocore reads AWS_DEFAULT_REGION (and the profile's `region`); AWS_REGION alone is not read by it
        return (
            "no AWS region configured: export AWS_DEFAULT_REGION=us-west-2 (or set `region` in ~/.aws/config for "
            f"your profile); botocore {botocore.__version__} does not read AWS_REGION"
        )
    if name in {"NoCredentialsError", "PartialCredentialsError"}:
        return (
            "no AWS credentials found: configure them (aws configure, AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY)"
        )
    if name == "EndpointConnectionError":
        return f"cannot reach the AWS endpoint ({exc}); check AWS_ENDPOINT_URL and the network"
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        from launcher.aws import error_code, error_message, short

        code = error_code(exc)
        msg = short(error_message(exc), 400)
        if code == "ResourceLimitExceeded":
            return (
                f"AWS error {code}: {msg}. An account quota is reached: request an increase in Service Quotas or "
                "wait for running jobs; submitting again is safe (existing jobs are skipped)"
            )
        if code in {"NoSuchBucket"}:
            return f"S3 bucket not found ({msg}): create it or fix --s3-prefix"
        if code in {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}:
            return f"AWS denied the request ({code}: {msg}); check the IAM permissions of your credentials"
        return f"AWS error {code}: {msg}"
    return None


# ----------------------------------------------------------------------------------------------- options


def with_options(options: Sequence[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    """Apply a list of click options in their listed order (shared option sets)."""

    def deco(fn: Any) -> Any:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return deco


class FiniteFloat(click.ParamType):
    """A finite number within (``low``, ``high``] (or [``low``, ...] with ``low_open=False``): NaN, inf and
    out-of-range values are usage errors (exit 2) naming the option, never a failure later on."""

    name = "number"

    def __init__(self, low: float, high: float, low_open: bool = True) -> None:
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        import math

        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        above = number > self.low if self.low_open else number >= self.low
        if not (math.isfinite(number) and above and number <= self.high):
            bracket = "(" if self.low_open else "["
            self.fail(
                f"{value!r} is not a finite number in {bracket}{self.low:g}, {self.high:g}]", param, ctx
            )
        return number


def pairs(values: Sequence[str], what: str) -> dict[str, str]:
    """`NAME=VALUE` options -> dict (stripped); a usage error naming the option for anything else."""
    out = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.UsageError(f"{what} {value!r} is not NAME=VALUE")
        out[key.strip()] = val.strip()
    return out
