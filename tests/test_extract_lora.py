"""otamerge extract-lora: the truncated SVD against numpy's fp64 SVD (Eckart and Young),
the adapter through peft's merge_and_unload and through our own LoRA reader, and against
mergekit 0.1.5's mergekit-extract-lora on the same models."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import peft  # a test dependency (pyproject's test extra)
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from checkpoints import make_family
from otamerge.cli import main
from otamerge.extract_lora import ExtractOptions, decompose, extract_lora
from otamerge.io.checkpoint import Checkpoint
from otamerge.io.lora import LoraExpert

REPO = Path(__file__).resolve().parents[1]
MERGEKIT = Path(os.environ.get("MERGEKIT_YAML", REPO / ".venv-mergekit/bin/mergekit-yaml")).with_name(
    "mergekit-extract-lora")
QUIET = ExtractOptions(progress=False, device="cpu")


def _matrix(seed: int, shape=(12, 8), rank: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if rank is None:
        return rng.standard_normal(shape)
    return rng.standard_normal((shape[0], rank)) @ rng.standard_normal((rank, shape[1]))


@pytest.mark.parametrize("distribute", [True, False])
def test_decompose_is_the_best_rank_r_approximation(distribute):
    m = _matrix(0)
    s = np.linalg.svd(m, compute_uv=False)
    for r in range(1, 9):
        a, b = decompose(torch.tensor(m, dtype=torch.float32), r, distribute_scale=distribute)
        assert a.shape == (r, 8) and b.shape == (12, r)
        err = np.linalg.norm(m - (b @ a).double().numpy())
        assert abs(err - np.sqrt((s[r:] ** 2).sum())) < 1e-5 * np.linalg.norm(m), r
        # where the singular values go: sqrt(s) on each side, or all of s on A with B orthonormal
        want_a, want_b = (np.sqrt(s[:r]), np.sqrt(s[:r])) if distribute else (s[:r], np.ones(r))
        np.testing.assert_allclose(a.norm(dim=1).numpy(), want_a, rtol=1e-5)
        np.testing.assert_allclose(b.norm(dim=0).numpy(), want_b, rtol=1e-5)


def test_sv_epsilon_finds_a_low_rank_difference_and_rebuilds_it():
    m = _matrix(1, rank=3)
    a, b = decompose(torch.tensor(m, dtype=torch.float32), 8, sv_epsilon=1e-3)
    assert a.shape == (3, 8)
    np.testing.assert_allclose((b @ a).double().numpy(), m, atol=1e-4)
    a, _ = decompose(torch.zeros(5, 4), 8)  # an untouched layer keeps nothing
    assert a.shape == (0, 4)


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("fam"), n_experts=1, seed=3, hidden=16)


def _state(folder: Path) -> dict[str, torch.Tensor]:
    ckpt = Checkpoint(folder)
    try:
        return {n: ckpt.get(n) for n in ckpt.names()}
    finally:
        ckpt.close()


def _through_peft(base_dir: Path, adapter: Path) -> dict[str, torch.Tensor]:
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return peft.PeftModel.from_pretrained(base, adapter).merge_and_unload().state_dict()


def _through_reader(base_dir: Path, adapter: Path) -> dict[str, torch.Tensor]:
    base = Checkpoint(base_dir, "base")
    lora = LoraExpert(adapter, base, "adapter")
    try:
        return {n: lora.get(n) for n in lora.names()}
    finally:
        lora.close()
        base.close()


def _assert_model(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float) -> None:
    assert set(want) <= set(got)
    for name, w in want.items():
        torch.testing.assert_close(got[name], w, atol=atol, rtol=0, msg=name)


def test_full_rank_adapter_gives_back_the_expert(fam, tmp_path):
    out = tmp_path / "lora"
    assert main(["extract-lora", str(fam["expert0"]), str(fam["base"]), str(out), "--rank", "64",
                 "--quiet", "--device", "cpu"]) == 0
    report = json.loads((out / "extraction.json").read_text())
    assert report["relative_error"] < 1e-5
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert config["modules_to_save"] == ["embed_tokens", "input_layernorm", "lm_head", "norm",
                                         "post_attention_layernorm"]
    expert = _state(fam["expert0"])
    _assert_model(_through_peft(fam["base"], out), expert, 1e-5)
    _assert_model(_through_reader(fam["base"], out), expert, 1e-5)


def test_low_rank_adapter_is_each_layers_best_approximation(fam, tmp_path):
    out = tmp_path / "lora"
    report = extract_lora(fam["expert0"], fam["base"], out, ExtractOptions(rank=2, progress=False, device="cpu"))
    base, expert, merged = _state(fam["base"]), _state(fam["expert0"]), _through_peft(fam["base"], out)
    errs, norms = 0.0, 0.0
    for name, w in expert.items():
        if name.endswith("_proj.weight"):  # each linear layer: base + its best rank-2 approximation
            d = (w.double() - base[name].double()).numpy()
            s = np.linalg.svd(d, compute_uv=False)
            tail = np.sqrt((s[2:] ** 2).sum())
            got = np.linalg.norm(d - (merged[name].double() - base[name].double()).numpy())
            assert abs(got - tail) < 1e-5 * np.linalg.norm(d), name
            layer = report["layers"][name.removesuffix(".weight")]
            assert layer["rank"] == 2 and abs(layer["relative_error"] - tail / np.linalg.norm(d)) < 1e-5
            errs, norms = errs + tail ** 2, norms + (s ** 2).sum()
        else:  # embeddings, norms and the head: the expert's own values
            assert torch.equal(merged[name], w), name
    assert abs(report["relative_error"] - np.sqrt(errs / norms)) < 1e-5
    weights = load_file(out / "adapter_model.safetensors")
    assert report["adapter_bytes"] == sum(t.numel() * t.element_size() for t in weights.values())


def test_biases_of_linear_layers_travel_as_lora_bias(tmp_path):
    from checkpoints import build_tokenizer

    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, attention_bias=True, mlp_bias=True)
    torch.manual_seed(0)
    for name in ("base", "expert"):
        model = LlamaForCausalLM(cfg)
        model.save_pretrained(tmp_path / name)
        build_tokenizer().save_pretrained(tmp_path / name)
    out = tmp_path / "lora"
    extract_lora(tmp_path / "expert", tmp_path / "base", out, QUIET)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["lora_bias"] is True
    assert "base_model.model.model.layers.0.mlp.up_proj.lora_B.bias" in load_file(out / "adapter_model.safetensors")
    expert = _state(tmp_path / "expert")
    _assert_model(_through_peft(tmp_path / "base", out), expert, 1e-5)
    _assert_model(_through_reader(tmp_path / "base", out), expert, 1e-5)


def test_a_tied_head_travels_with_the_embedding(tmp_path):
    """Tied embeddings (SmolLM2, Llama 3.2): the checkpoint has no head, but peft's merge
    keeps the base's head tied to the embedding it replaces unless the adapter saves both."""
    from checkpoints import build_tokenizer

    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(1)
    for name in ("base", "expert"):
        LlamaForCausalLM(cfg).save_pretrained(tmp_path / name)
        build_tokenizer().save_pretrained(tmp_path / name)
    extract_lora(tmp_path / "expert", tmp_path / "base", tmp_path / "lora", QUIET)
    assert "lm_head" in json.loads((tmp_path / "lora/adapter_config.json").read_text())["modules_to_save"]
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(base, tmp_path / "lora").merge_and_unload()
    expert = AutoModelForCausalLM.from_pretrained(tmp_path / "expert", dtype=torch.float32)
    ids = torch.tensor([[1, 5, 7, 9, 11]])
    torch.testing.assert_close(merged(ids).logits, expert(ids).logits, atol=1e-4, rtol=0)


def test_mismatched_models_and_rank_zero_are_refused(fam, tmp_path, capsys):
    assert main(["extract-lora", str(fam["expert0"]), str(fam["base"]), str(tmp_path / "a"), "--rank", "0"]) == 1
    assert "rank must be at least 1" in capsys.readouterr().err
    other = make_family(tmp_path / "other", n_experts=0, seed=1, hidden=32)["base"]
    assert main(["extract-lora", str(fam["expert0"]), str(other), str(tmp_path / "b"), "--quiet"]) == 1
    assert "has shape" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.skipif(not MERGEKIT.exists(), reason="mergekit 0.1.5's venv (make test builds it)")
@pytest.mark.parametrize("rank", [2, 8])
def test_agrees_with_mergekit_extract_lora(fam, tmp_path, rank):
    ours, theirs = tmp_path / "ours", tmp_path / "mergekit"
    report = extract_lora(fam["expert0"], fam["base"], ours, ExtractOptions(rank=rank, progress=False, device="cpu"))
    subprocess.run([str(MERGEKIT), "--model", str(fam["expert0"]), "--base-model", str(fam["base"]),
                    "--out-path", str(theirs), "--max-rank", str(rank)], check=True, capture_output=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    a, b = load_file(ours / "adapter_model.safetensors"), load_file(theirs / "adapter_model.safetensors")
    assert set(a) == set(b)
    for key in a:
        if ".lora_A." in key:  # the factors up to the SVD's signs: their product
            key_b = key.replace(".lora_A.", ".lora_B.")
            torch.testing.assert_close(a[key_b] @ a[key], b[key_b] @ b[key], atol=1e-6, rtol=1e-5)
        elif ".lora_B." not in key:
            assert torch.equal(a[key], b[key]), key
    ca, cb = (json.loads((p / "adapter_config.json").read_text()) for p in (ours, theirs))
    assert ca["r"] == cb["r"] == rank and ca["rank_pattern"] == cb["rank_pattern"] == {}
    assert ca["target_modules"] == sorted(cb["target_modules"])
    assert ca["modules_to_save"] == sorted(cb["modules_to_save"])
    assert report["relative_error"] > 0.1  # rank 8 of 16-wide layers drops much of a random difference
