"""The devices MXNet computes on: every GPU present (``mx.gpu(i)``), the CPU otherwise."""

from __future__ import annotations


def contexts() -> list:
    """``[mx.gpu(0), ..., mx.gpu(n-1)]`` when GPUs are visible, ``[mx.cpu()]`` otherwise."""
    import mxnet as mx

    try:
        n = mx.context.num_gpus()
    except mx.MXNetError:  # a CPU build of MXNet on a machine with a GPU driver
        n = 0
    return [mx.gpu(i) for i in range(n)] or [mx.cpu()]


def default_context():
    """The first device of :func:`contexts` (where inference runs)."""
    return contexts()[0]


def describe(ctxs) -> str:
    gpus = [c for c in ctxs if c.device_type == "gpu"]
    return f"{len(gpus)} GPU(s)" if gpus else "CPU"
