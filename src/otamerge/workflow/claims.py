"""The merge each of the paper's claims reads, by its role (``results/summary/claims.md``;
config ``claims`` overrides). Imports nothing heavy: the workflow reads it while building
its DAG, and ``otamerge.report.claims`` measures the claims from these merges' files."""

CLAIM_MERGES = {"ota_ffg": "ota_ffg", "ties": "ties", "fisher": "fisher", "rank1": "ota_ffg_rank1", "ota": "ota"}
