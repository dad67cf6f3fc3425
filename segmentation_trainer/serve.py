"""``python -m segmentation_trainer.serve``: the ``serve`` command, kept under its old name because commands outside
this package run it (tests/launcher/model/test_model_predict_serve.py, README). The server lives in
:mod:`segmentation_trainer.serving`; import from there."""

if __name__ == "__main__":
    from segmentation_trainer.serving.server import main

    raise SystemExit(main())
