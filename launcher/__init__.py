"""earthmon: launcher."""
