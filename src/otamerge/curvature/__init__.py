"""Curvature of each parameter: Adam's second moments (full, rank-1, rank-r), the empirical
Fisher, and the OBS importance from the base's calibration Hessians."""

# where an expert folder ships its Adam exp_avg_sq (the paper's experts, and ours)
EXPORTED_MOMENTS = "export/exp_avg_sq.safetensors"
