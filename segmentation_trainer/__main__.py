"""``python -m segmentation_trainer train|serve|prepare-sn6|evaluate|generate-sn6``."""

from segmentation_trainer.cli import main

if __name__ == "__main__":
    main()
