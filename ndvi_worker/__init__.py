"""earthmon NDVI worker: Sentinel-2 L2A STAC items in, NDVI Cloud-Optimized GeoTIFFs out (SageMaker Processing)."""

__version__ = "0.1.0"
