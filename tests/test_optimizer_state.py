"""Optimizer states as trainers write them: a real transformers.Trainer checkpoint, named
by the Trainer's parameter groups, and torch's plain AdamW, named in the model's order."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from checkpoints import make_family, trainer_checkpoint
from otamerge.cli import main
from otamerge.curvature.moments import OPTIMIZER_KEY, Moments, adam_bias_factor
from otamerge.curvature.optimizer_state import optimizer_moments, parameter_names
from otamerge.errors import OtaMergeError
from otamerge.io import download as dl


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """checkpoint-3 of a Trainer run of a tiny tied-embedding Llama (groups of 15 and 5)."""
    return trainer_checkpoint(tmp_path_factory.mktemp("trainer"), steps=3)


def test_a_trainer_checkpoint_is_named_by_the_trainers_groups_bit_for_bit(checkpoint):
    folder, live = checkpoint
    state = torch.load(folder / "optimizer.pt", weights_only=True)
    assert [len(g["params"]) for g in state["param_groups"]] == [15, 5]  # decay first, then norms
    got, record = optimizer_moments(folder / "optimizer.pt", folder)
    assert set(got) == set(live) and "lm_head.weight" not in got  # tied: one tensor on disk
    for name, v in live.items():
        assert got[name].dtype == torch.float32 and torch.equal(got[name], v), name
    assert record == {"optimizer": "torch optimizer state", "layout": "transformers.Trainer", "step": 3,
                      "betas": [0.9, 0.999], "global_step": 3}


def test_compress_moments_of_a_trainer_checkpoint_gives_each_parameter_its_own_factors(checkpoint, tmp_path):
    folder, live = checkpoint
    assert main(["compress-moments", str(folder / "optimizer.pt"), str(tmp_path / "r1.safetensors"),
                 "--model", str(folder), "--quiet"]) == 0
    r1 = load_file(tmp_path / "r1.safetensors")
    norm = "model.layers.0.input_layernorm.weight"
    assert torch.equal(r1[norm], live[norm])  # 1-D: stored as it is (a 2-D state here before the fix)
    q = live["model.layers.0.self_attn.q_proj.weight"].double()
    assert torch.allclose(r1["model.layers.0.self_attn.q_proj.weight.rank1.row"].double(), q.sum(1), rtol=1e-6)
    assert torch.allclose(r1["model.layers.0.self_attn.q_proj.weight.rank1.col"].double(), q.sum(0), rtol=1e-6)
    assert r1["model.layers.0.self_attn.k_proj.weight.rank1.row"].shape == (8,)  # GQA: one KV head of 8


def test_convert_optimizer_writes_named_moments_that_bias_correction_can_read(checkpoint, tmp_path):
    folder, live = checkpoint
    out = tmp_path / "m.safetensors"
    assert main(["convert-optimizer", str(folder / "optimizer.pt"), str(out), "--model", str(folder)]) == 0
    assert load_file(out).keys() == live.keys()
    with safe_open(str(out), "pt") as fh:
        meta = fh.metadata()
    assert adam_bias_factor(meta) == (3, 0.999, 1 - 0.999 ** 3)
    m = Moments(out, "m")
    assert torch.equal(m.get("model.embed_tokens.weight"), live["model.embed_tokens.weight"])


def test_plain_adamw_is_named_in_the_models_order(tmp_path):
    fam = make_family(tmp_path / "f", n_experts=1)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(fam["expert0"])
    opt = torch.optim.AdamW(model.parameters())
    model(input_ids=torch.tensor([[1, 5, 6]]), labels=torch.tensor([[1, 5, 6]])).loss.backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    assert parameter_names(fam["expert0"]) == [n for n, _ in model.named_parameters()]
    got, record = optimizer_moments(tmp_path / "optimizer.pt", fam["expert0"])
    assert record["layout"] == "model order" and record["step"] == 1
    for n, p in model.named_parameters():
        assert torch.equal(got[n], opt.state[p]["exp_avg_sq"]), n


def test_states_that_fit_no_grouping_are_refused_and_nothing_is_written(checkpoint, tmp_path, capsys):
    folder, _ = checkpoint
    state = torch.load(folder / "optimizer.pt", weights_only=True)
    # the same states in one group, decay parameters first: neither layout's order
    state["param_groups"] = [{**state["param_groups"][0], "params": list(range(20))}]
    torch.save(state, tmp_path / "optimizer.pt")
    out = tmp_path / "m.safetensors"
    assert main(["convert-optimizer", str(tmp_path / "optimizer.pt"), str(out), "--model", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be matched to the model's parameters" in err
    assert "not transformers.Trainer's grouping ([15, 5])" in err
    assert "in model order, parameter 8's exp_avg_sq has shape [16, 16], model.layers.0.input_layernorm.weight has [16]" in err
    assert not out.exists()
    other = make_family(tmp_path / "f", n_experts=0)["base"]  # another model: 21 parameters (untied)
    with pytest.raises(OtaMergeError, match=r"groups of \[15, 5\] .*15 parameters|20 parameters, the model has 21"):
        optimizer_moments(folder / "optimizer.pt", other)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_RAN",))


def test_a_pickle_that_runs_code_is_refused(checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"state": {0: {"exp_avg_sq": _Evil()}}}, fh)
    with pytest.raises(OtaMergeError, match="not a loadable optimizer state with weights_only=True"):
        optimizer_moments(tmp_path / "evil.pt", checkpoint[0])
    assert not (tmp_path / "EVIL_RAN").exists()


def test_download_of_a_trainer_checkpoint_converts_its_optimizer_state(checkpoint, tmp_path):
    folder, live = checkpoint
    out = dl.download(dl.Source("math", str(folder), preconditioner="optimizer.pt"), tmp_path / "math")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "manifest.json", "model.safetensors",
        "preconditioner.safetensors", "tokenizer.json", "tokenizer_config.json"]  # no pickles, no .pt
    got = load_file(out / "preconditioner.safetensors")
    assert got.keys() == live.keys() and all(torch.equal(got[n], live[n]) for n in live)
    entry = json.loads((out / dl.MANIFEST).read_text())["files"][-1]
    assert entry["converted_from"] == "preconditioner.pt" and entry["source"] == str(folder / "optimizer.pt")
    assert entry["optimizer_state"]["layout"] == "transformers.Trainer"
    with safe_open(str(out / "preconditioner.safetensors"), "pt") as fh:
        assert json.loads(fh.metadata()[OPTIMIZER_KEY])["global_step"] == 3
