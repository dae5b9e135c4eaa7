"""Two experts given to the workflow as transformers.Trainer wrote them: each `source` a
`checkpoint-N/` folder taken as it is, its `optimizer.pt` the preconditioner. The whole
chain (download and conversion, FFG, OTA merges, TIES, perplexity, summary) runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from checkpoints import trainer_checkpoint
from workflow_utils import job_counts, snakemake


@pytest.mark.long
def test_trainer_checkpoints_run_through_the_workflow(tmp_path):
    a, live_a = trainer_checkpoint(tmp_path / "a", steps=3, seed=0)
    b, live_b = trainer_checkpoint(tmp_path / "b", steps=4, seed=1, base=tmp_path / "a" / "base")
    text = tmp_path / "heldout.txt"
    text.write_text(" ".join(["the merged model reads this text"] * 40) + "\n")
    cfg = {
        "seeds": [0],
        "models": {"base": {"source": str(tmp_path / "a" / "base")},
                   "experts": {"a": {"source": str(a), "preconditioner": "optimizer.pt"},
                               "b": {"source": str(b), "preconditioner": "optimizer.pt"}}},
        "ffg": {"densities": [0.5], "metrics": ["fisher", "fisher_rank1"]},
        "moments": {"bias_correction": True},
        "thresholds": {"mode": "fixed", "fixed": {"a": 0.5, "b": 0.5}},
        "merges": {"ota_ffg": {"method": "ota", "ffg": "fisher"},
                   "ota_ffg_rank1": {"method": "ota", "ffg": "fisher_rank1"},
                   "ties": {"method": "ties", "parameters": {"density": 0.5, "weight": 1.0}}},
        "evaluation": {"backends": ["perplexity"], "tasks": ["heldout"],
                       "perplexity": {"texts": {"heldout": str(text)}}},
        "resources": {"model_params_b": 0.0001},
    }
    wf = tmp_path / "wf"
    res = snakemake(wf, "--cores", "2", "--replace-workflow-config", config=cfg)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = job_counts(res.stdout + res.stderr)
    assert jobs["download"] == 3 and jobs["merge"] == 3 and jobs["bias_correct_moments"] == 2, jobs

    models = wf / "results/seed0/models"
    for name, live, steps in (("a", live_a, 3), ("b", live_b, 4)):
        assert not list((models / name).glob("*.pt"))  # the pickle is converted, not kept
        got = load_file(models / name / "preconditioner.safetensors")
        assert got.keys() == live.keys()
        assert all(torch.equal(got[n], v) for n, v in live.items())  # bit for bit, by name
        entry = next(f for f in json.loads((models / name / "manifest.json").read_text())["files"]
                     if f.get("converted_from"))
        assert entry["optimizer_state"]["step"] == steps
        assert entry["optimizer_state"]["layout"] == "transformers.Trainer"
    scores = pd.read_csv(wf / "results/summary/scores.csv")
    merged = scores[scores.model.str.startswith("merge/")].set_index("model").score
    # near the base's perplexity : a few steps of a random model move it little
    assert sorted(merged.index) == ["merge/ota_ffg", "merge/ota_ffg_rank1", "merge/ties"]
    base = scores.set_index("model").score["base"]
    assert ((merged - base).abs() < 0.05 * base).all(), merged
