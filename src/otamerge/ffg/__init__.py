"""Fast Fisher Grafting: saliency, exact model-wide thresholds, grafts with statistics.json,
and the choice of each expert's density."""

# the saliencies a graft ranks entries by (graft.saliency; configs call it `metric`), here
# without torch for the merge-config catalog
SALIENCIES = ("fisher", "magnitude", "sparsegpt")
