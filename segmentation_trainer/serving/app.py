"""The WSGI application (Flask): ``/ping``, ``/execution-parameters``, ``/invocations``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from segmentation_trainer import codecs
from segmentation_trainer.predict import Deadline, DeadlineExceeded
from segmentation_trainer.serving.admission import GATE
from segmentation_trainer.serving.config import ServeConfig
from segmentation_trainer.serving.inference import infer
from segmentation_trainer.serving.model import LoadedModel, ModelHolder, load_model_dir

log = logging.getLogger("segmentation_trainer.serve")  # one logger for the whole server, as before the split


def create_app(config: ServeConfig, loader: Callable[[], LoadedModel] | None = None):
    """The WSGI application (Flask). ``loader`` defaults to loading ``config.model_dir`` with MXNet."""
    from flask import Flask, Response, request
    from werkzeug.exceptions import HTTPException

    holder = ModelHolder(
        loader
        or (
            lambda: load_model_dir(
                config.model_dir, config.window_batch, config.engine, config.threads_per_worker
            )
        )
    ).start()
    app = Flask("segmentation_trainer.serve")
    app.config["MAX_CONTENT_LENGTH"] = None  # checked below, with a helpful message
    app.extensions["earthmon.model"] = holder

    def error(status: int, message: str) -> Response:
        return Response(json.dumps({"error": message}), status=status, mimetype="application/json")

    # every refusal is JSON, Flask's own too (405 for GET/PUT/OPTIONS on /invocations, 404, 400, ...): no HTML
    routes = "POST /invocations, GET /ping, GET /execution-parameters"

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        hints = {404: f"no such path: this server answers {routes}",
                 405: f"method not allowed here: this server answers {routes}"}  # fmt: skip
        response = error(status, hints.get(status, f"{status} {exc.name}"))
        if status == 405 and getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> Response:
        log.exception("unexpected error answering %s", request.path[:200])
        return error(500, "internal error (logged on the server)")

    def model_unavailable() -> str:
        """What a caller is told about a model that failed to load (the details, which name paths and the loader's
        internals, are in the server log only)."""
        return "the model failed to load: see the server log"

    @app.get("/ping", provide_automatic_options=False)
    def ping() -> Response:
        if holder.ready:
            return Response("", status=200)
        if holder.error:
            log.error("/ping: the model failed to load from %s: %s", config.model_dir, holder.error)
            return error(500, model_unavailable())
        return error(503, "model is loading")

    @app.get("/execution-parameters", provide_automatic_options=False)
    def execution_parameters() -> Response:
        body = {
            "MaxConcurrentTransforms": config.workers,
            "BatchStrategy": config.batch_strategy,
            "MaxPayloadInMB": int(config.max_payload_mb) if config.max_payload_mb >= 1 else 1,
        }
        return Response(json.dumps(body), status=200, mimetype="application/json")

    limit = 1 + config.queue_per_worker

    @app.post("/invocations", provide_automatic_options=False)
    def invocations() -> Response:
        started = time.perf_counter()
        deadline = Deadline(config.deadline_s)  # from the request's arrival: waiting for the slot counts
        admitted = False
        try:
            codecs.parse_content_type(request.headers.get("Content-Type"))
            codecs.negotiate_accept(request.headers.get("Accept"))
            length = request.content_length
            if length is not None and length > config.max_payload_bytes:
                raise codecs.PayloadTooLarge(
                    f"request body of {length} bytes exceeds {config.max_payload_mb:g} MB "
                    "(SAGEMAKER_MAX_PAYLOAD_IN_MB): split the image into tiles"
                )
            admitted = GATE.admit(limit)
            if not admitted:
                log.warning("invocation refused: %d already in this worker", limit)
                return error(
                    503,
                    f"server busy: this worker already has {limit} invocation(s) (1 running, "
                    f"{config.queue_per_worker} waiting, EARTHMON_QUEUE_PER_WORKER): retry later, send fewer "
                    "requests at once, or add instances",
                )
            body = request.stream.read(config.max_payload_bytes + 1)
            if (
                not holder.wait(min(config.model_wait_s, max(0.0, deadline.remaining())))
                or holder.model is None
            ):
                reason = model_unavailable() if holder.error else "model is still loading"
                return error(503, f"model not available: {reason}")
            if not GATE.acquire(deadline.remaining()):
                log.warning(
                    "invocation refused: no inference slot within the %g s deadline", config.deadline_s
                )
                return error(
                    503,
                    f"server busy: no inference slot became free within the {config.deadline_s:g} s request "
                    "deadline (EARTHMON_REQUEST_DEADLINE_S): retry later or send fewer requests at once",
                )
            try:
                payload, media = infer(
                    body,
                    request.headers.get("Content-Type"),
                    request.headers.get("Accept"),
                    holder.model,
                    config,
                    deadline,
                )
            finally:
                GATE.release()
        except DeadlineExceeded as exc:
            log.warning("invocation stopped at its deadline: %s", exc)
            return error(
                504,
                f"{exc}: the request deadline is {config.deadline_s:g} s (EARTHMON_REQUEST_DEADLINE_S); send "
                "smaller images or tiles (launcher predict tiles any image: lower its --max-payload-mb), or "
                f"raise EARTHMON_REQUEST_DEADLINE_S (at most SAGEMAKER_MODEL_SERVER_TIMEOUT, {config.timeout_s} s)",
            )
        except codecs.CodecError as exc:
            log.info("invocation rejected (%d): %s", exc.status, exc)
            return error(exc.status, str(exc))
        except Exception as exc:
            log.exception("invocation failed")
            return error(500, f"inference failed ({type(exc).__name__}; details in the server log)")
        finally:
            if admitted:
                GATE.leave()
        log.debug(
            "invocation %s -> %s in %.0f ms",
            request.content_type,
            media,
            1e3 * (time.perf_counter() - started),
        )
        return Response(payload, status=200, mimetype=media)

    return app
