"""The launcher's error types, in one place (no imports): the core raises them, `launcher.cli.console` maps each
to its message and exit status (usage errors exit 2, the others 1)."""

from __future__ import annotations


class PlanError(ValueError):
    """A plan that cannot be built or read; the message says what to change."""


class ArgumentError(PlanError):
    """A command-line argument that cannot work (the CLI exits 2, as for any usage error)."""


class RequestError(ValueError):
    """A request that SageMaker would reject, caught before anything is sent; the message lists every problem
    (the CLI exits 2: the options make an invalid request)."""


class SubmitError(RuntimeError):
    """A submission that went wrong on the AWS side (exit 1)."""


class PredictError(RuntimeError):
    """A tile the model could not predict (the message says which and why; exit 1)."""


class ResponseError(RuntimeError):
    """A server's answer beyond a bound (too big, too slow, a redirect not followed, a link elsewhere; exit 1)."""
