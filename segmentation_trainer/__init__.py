"""earthmon: segmentation_trainer."""
