"""The inference server of the training image: ``docker run IMAGE serve`` (hosting and batch transform).

- ``GET /ping``: 200 once this worker's model is loaded, 503 while it loads, 500 if loading failed (the
  reason in the body and the log).
- ``POST /invocations``: one image in (``image/jpeg``, ``image/png``, ``image/tiff``, ``application/x-npy``),
  the prediction out by ``Accept`` (see :mod:`segmentation_trainer.codecs`). Errors: 415 unsupported
  Content-Type, 406 unsupported Accept, 413 body or image too large, 400 corrupt image or wrong band count,
  503 model not loaded or every inference slot busy, 504 the request cannot finish within its deadline;
  each with a JSON body ``{"error": "..."}`` saying what to do.
- ``GET /execution-parameters``: batch transform settings (``MaxConcurrentTransforms`` = workers,
  ``BatchStrategy``, ``MaxPayloadInMB``), honouring ``SAGEMAKER_MAX_PAYLOAD_IN_MB`` and
  ``SAGEMAKER_BATCH_STRATEGY``.

Production server: gunicorn, pre-forked workers (one per vCPU by default, ``SAGEMAKER_MODEL_SERVER_WORKERS``
overrides), each with its own copy of the model and ``cpus / workers`` math threads, one inference at a
time per worker (inference is CPU-bound) while a second thread answers ``/ping``; busy workers let idle ones
accept new connections first (:class:`BalancedThreadWorker`). SIGTERM stops accepting and lets in-flight
requests finish within 25 s (SageMaker sends SIGKILL 30 s after SIGTERM). The master never imports MXNet:
workers load it after the fork.

Staying healthy under hostile or mistaken input (docs/security/endpoint-serving.md):

- a request deadline (``EARTHMON_REQUEST_DEADLINE_S``, below SageMaker's 60 s invocation timeout): an image whose
  window count times the fastest measured time per window exceeds what is left of it is refused before
  the prediction starts, a running prediction checks it between window batches; both answer 504 and free the
  inference slot. ``SAGEMAKER_MODEL_SERVER_TIMEOUT`` + 10 s is the last resort: a worker whose inference
  still runs then (a single forward pass ignoring the deadline) is restarted;
- admission: each worker runs one inference and lets ``EARTHMON_QUEUE_PER_WORKER`` wait (for at most the
  deadline); more are answered 503 at once, so ``/ping`` always finds a free thread (within 2 s under load);
- the front (``EARTHMON_SERVE_FRONT``): ``nginx`` (the image's default, through ``auto`` when an ``nginx``
  binary is on PATH) listens on the port, reads whole request bodies itself (header and body read timeouts,
  ``client_max_body_size`` = the payload limit) and passes complete requests to gunicorn over a private unix
  socket, so slow or stalled clients hold no worker thread. ``none`` (``auto`` without nginx, e.g. on a
  laptop) is gunicorn alone on the port, where a slow client holds a thread for as long as it trickles.

Configuration comes from the environment SageMaker sets (read once, in :meth:`ServeConfig.from_env`):

=================================  =========================================================  =========
``SAGEMAKER_BIND_TO_PORT``         port to listen on                                          8080
``SAGEMAKER_BASE_DIR``             root of the contract paths; the model is in ``model/``     /opt/ml
``SAGEMAKER_MODEL_SERVER_WORKERS`` worker processes                                           vCPUs
``SAGEMAKER_MODEL_SERVER_TIMEOUT`` hard limit: an inference still running 10 s past it restarts  60
                                   its worker (nginx waits 20 s past it for an answer)
``EARTHMON_REQUEST_DEADLINE_S``    a request's deadline: 504 (refused early or stopped between  min(50, timeout)
                                   window batches), at most SAGEMAKER_MODEL_SERVER_TIMEOUT
``EARTHMON_QUEUE_PER_WORKER``      invocations waiting per worker beside the running one       2
                                   (more: 503 at once)
``EARTHMON_SERVE_FRONT``           ``nginx``, ``none`` or ``auto`` (nginx when on PATH)        auto
``EARTHMON_CLIENT_TIMEOUT_S``      nginx: max seconds between reads of a client's headers or   10
                                   body, or writes of the answer
``SAGEMAKER_MAX_PAYLOAD_IN_MB``    largest request body (413 above it)                        6
``SAGEMAKER_BATCH_STRATEGY``       reported by /execution-parameters                          SINGLE_RECORD
``EARTHMON_MAX_PIXELS``            largest decoded image, in pixels (413 above it)            64 Mi
``EARTHMON_WINDOW_OVERLAP``        overlap of sliding windows, fraction of the window         0.333
``EARTHMON_WINDOW_BATCH``          windows per forward pass                                   4
``EARTHMON_MIN_BUILDING_PIXELS``   smallest component counted as a building (JSON summary)    80
``EARTHMON_SERVE_ENGINE``          ``auto`` (time MXNet and ONNX Runtime at load, serve with the  auto
                                   faster), ``mxnet`` or ``onnx`` (:mod:`.engines`)
=================================  =========================================================  =========

Modules: :mod:`.config` (ServeConfig: the environment, read once), :mod:`.model` (loading the model, in the
background), :mod:`.inference` (one request: decode, predict, encode), :mod:`.admission` (one inference at a
time per worker), :mod:`.worker` (the gunicorn worker class), :mod:`.app` (the Flask app: /ping, /invocations,
/execution-parameters), :mod:`.front` (nginx in front of gunicorn), :mod:`.server` (gunicorn, the process
supervision, the ``serve`` command). ``python -m segmentation_trainer.serving`` runs the command.
"""
