"""Curvature of each parameter: Adam's second moments (full, rank-1, rank-r), the empirical
Fisher, and the OBS importance from the base's calibration Hessians."""
