"""otamerge: curvature-informed model merging (OTA merging with Fast Fisher Grafting)."""

__version__ = "0.1.0"
