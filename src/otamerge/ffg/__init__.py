"""Fast Fisher Grafting: saliency, exact model-wide thresholds, grafts with statistics.json,
and the choice of each expert's density."""
