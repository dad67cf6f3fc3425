"""The gunicorn worker class of the server (gunicorn imports it by name: ``segmentation_trainer.serving.worker.
BalancedThreadWorker``); it shares :data:`~segmentation_trainer.serving.admission.GATE` with the app."""

from __future__ import annotations

import os
import threading
import time

from segmentation_trainer.serving.admission import GATE
from segmentation_trainer.serving.config import HARD_LIMIT_MARGIN_S

BUSY_ACCEPT_DELAY_S = 0.05

try:  # the production worker class (gunicorn is in the image; the in-process app does not need it)
    from gunicorn.workers.gthread import ThreadWorker as _ThreadWorker
except ImportError:  # pragma: no cover
    _ThreadWorker = object


class BalancedThreadWorker(_ThreadWorker):  # type: ignore[misc, valid-type]
    """gunicorn's threaded worker, minus its greed: a worker busy with an inference waits a moment before
    accepting, so a new connection goes to an idle worker when there is one. Its other threads still
    answer /ping at once while an inference runs (SageMaker wants /ping within 2 s).

    A watchdog thread is the last resort behind the request deadline: gunicorn's own timeout never fires for
    a threaded worker whose main loop is alive, so when one inference has run longer than the gunicorn
    ``timeout`` (SAGEMAKER_MODEL_SERVER_TIMEOUT + 10 s), the worker exits and the master starts a fresh one."""

    def init_process(self):  # noqa: D102 - gunicorn's hook
        threading.Thread(target=self._watchdog, name="inference-watchdog", daemon=True).start()
        super().init_process()

    def _watchdog(self) -> None:
        limit = float(self.cfg.timeout)
        while True:
            time.sleep(min(1.0, limit / 4))
            since = GATE.running_since
            if since is not None and time.monotonic() - since > limit:
                self.log.error(
                    "worker %s: an inference has run %.0f s, past the hard limit of %.0f s "
                    "(SAGEMAKER_MODEL_SERVER_TIMEOUT + %d s): restarting the worker",
                    os.getpid(),
                    time.monotonic() - since,
                    limit,
                    HARD_LIMIT_MARGIN_S,
                )
                os._exit(1)  # not 3 or 4: gunicorn would stop the whole server on those

    def accept(self, listener):  # noqa: D102 - gunicorn's hook
        if GATE.busy:
            time.sleep(BUSY_ACCEPT_DELAY_S)  # an idle worker, if any, accepts first; EAGAIN is then ignored
        return super().accept(listener)
