"""earthmon: ndvi_worker."""
