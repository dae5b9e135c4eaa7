"""File names that several layers agree on: the engine writes them, the workflow and the
reports find them. At the bottom of the package: imports nothing, so any module may read it."""

EXPORTED_MOMENTS = "export/exp_avg_sq.safetensors"  # where an expert ships Adam's exp_avg_sq (the paper's and ours)
PRECONDITIONER = "preconditioner"   # + the source's suffix: where download puts an expert's moments
STATISTICS = "statistics.json"      # beside each graft: its threshold, counts and per-tensor statistics
MANIFEST = "manifest.json"          # beside each downloaded model: its source, revision and files
MERGE_CONFIG = "merge_config.yml"   # inside each merged model: the config that made it
CARD = "README.md"                  # inside each merged model: its model card
