"""``python -m segmentation_trainer.serving``: the ``serve`` command (the nginx front starts gunicorn this way)."""

from segmentation_trainer.serving.server import main

if __name__ == "__main__":
    raise SystemExit(main())
