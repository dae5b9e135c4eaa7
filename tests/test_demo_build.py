import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import build_tiny, tiny_config
from otamerge.demo.train import MOMENTS_FILE, OPTIMIZER_KEY


def test_expert_folder_has_the_papers_layout(tiny_demo):
    names = sorted(p.relative_to(tiny_demo / "experts/add").as_posix()
                   for p in (tiny_demo / "experts/add").rglob("*") if p.is_file())
    assert names == ["config.json", "export/exp_avg_sq.safetensors", "generation_config.json",
                     "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training.json"]
    assert json.loads((tiny_demo / "experts/add/training.json").read_text())["task"] == "add"


def test_expert_loads_with_transformers_offline(tiny_demo):
    model = AutoModelForCausalLM.from_pretrained(tiny_demo / "experts/rev", local_files_only=True)
    tok = AutoTokenizer.from_pretrained(tiny_demo / "experts/rev", local_files_only=True)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.tie_word_embeddings is False
    assert model.config.hidden_size == 32 and model.config.vocab_size == len(tok)
    out = model(**tok("<abc=", return_tensors="pt")).logits
    assert out.shape == (1, 6, len(tok)) and torch.isfinite(out).all()


@pytest.mark.parametrize("expert,steps", [("add", 4), ("rev", 6)])
def test_moments_match_the_parameters(tiny_demo, expert, steps):
    weights = load_file(tiny_demo / "experts" / expert / "model.safetensors")
    moments = load_file(tiny_demo / "experts" / expert / MOMENTS_FILE)
    assert set(moments) == set(weights) and "lm_head.weight" in moments
    for name, v in moments.items():
        assert v.shape == weights[name].shape and v.dtype == torch.float32, name
        assert torch.isfinite(v).all() and (v >= 0).all(), name
    # every parameter received gradient, embeddings only on the rows of characters used
    assert all(float(v.max()) > 0 for v in moments.values())
    assert int((moments["model.embed_tokens.weight"].sum(1) > 0).sum()) < weights["model.embed_tokens.weight"].shape[0]
    with safe_open(tiny_demo / "experts" / expert / MOMENTS_FILE, "pt") as f:
        state = json.loads(f.metadata()[OPTIMIZER_KEY])
    assert state["step"] == steps and state["betas"] == [0.9, 0.999]


def test_expert_differs_from_base_everywhere_it_trained(tiny_demo):
    base = load_file(tiny_demo / "base/model.safetensors")
    add = load_file(tiny_demo / "experts/add/model.safetensors")
    assert set(base) == set(add)
    changed = [n for n in base if not torch.equal(base[n], add[n])]
    assert "model.layers.0.self_attn.q_proj.weight" in changed and len(changed) == len(base)


def test_two_builds_with_one_seed_are_byte_identical(tiny_demo, tmp_path):
    again = build_tiny(tmp_path / "again", tiny_config())
    files = ["base/model.safetensors", "experts/add/model.safetensors",
             "experts/rev/model.safetensors", f"experts/rev/{MOMENTS_FILE}"]
    for f in files:
        assert (again / f).read_bytes() == (tiny_demo / f).read_bytes(), f
    other = tiny_config()
    other["seeds"] = [1]
    build_tiny(tmp_path / "other", other)
    assert (tmp_path / "other/base/model.safetensors").read_bytes() != (tiny_demo / files[0]).read_bytes()
