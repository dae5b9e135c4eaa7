from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from checkpoints import MOMENTS, make_family
from otamerge.io.checkpoint import Checkpoint
from otamerge.cli import main
from otamerge.config import parse_config
from otamerge.merge import MergeOptions, run_merge

QUIET = MergeOptions(progress=False)


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("fam"), n_experts=3, seed=3)


def ota_cfg(fam, experts=(0, 1, 2), threshold=None, **params):
    models = []
    for i in experts:
        p = {"preconditioner_path": str(fam[f"expert{i}"] / MOMENTS)}
        if threshold is not None:
            p["precond_threshold"] = threshold
        models.append({"model": str(fam[f"expert{i}"]), "parameters": p})
    return {"merge_method": "ota", "base_model": str(fam["base"]), "models": models,
            "parameters": {"epsilon": "1e-26", "fallback_to_base": True, **params}}


def tensors(folder):
    ck = Checkpoint(folder)
    return {n: ck.get(n) for n in ck.names()}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_single_expert_ota_equals_its_graft_byte_for_byte(fam, tmp_path, dtype):
    base, expert = tensors(fam["base"]), tensors(fam["expert1"])
    moments = load_file(fam["expert1"] / MOMENTS)
    sal = torch.cat([(moments[n] * (expert[n] - base[n]) ** 2).reshape(-1) for n in base])
    thr = float(torch.quantile(sal[:100_000], 0.8))  # any value works; take a mid one
    cfg = ota_cfg(fam, experts=(1,), threshold=thr)
    cfg["dtype"] = dtype
    out = run_merge(parse_config(cfg), tmp_path / "ota", MergeOptions(progress=False, chunk_bytes=512))
    merged = tensors(out)
    for n in base:
        graft = torch.where(moments[n] * (expert[n] - base[n]) ** 2 >= thr, expert[n], base[n])
        assert torch.equal(merged[n], graft.to(merged[n].dtype)), n


def test_ota_ignores_a_models_weight_as_the_papers_fork_does(fam, tmp_path):
    """The paper's OTA configs give each model `weight: 1.0`; its fork never reads it."""
    plain = ota_cfg(fam, threshold=1e-14)
    weighted = ota_cfg(fam, threshold=1e-14)
    for m, w in zip(weighted["models"], (0.2, 1.0, 3.0)):
        m["parameters"]["weight"] = w
    a = tensors(run_merge(parse_config(plain), tmp_path / "a", QUIET))
    b = tensors(run_merge(parse_config(weighted), tmp_path / "b", QUIET))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    base = tensors(fam["base"])
    assert any(not torch.equal(a[n], base[n]) for n in a)  # the merge did something


def test_row_chunks_give_the_same_bytes_as_whole_tensors(fam, tmp_path):
    cfg = parse_config(ota_cfg(fam, threshold=1e-14))
    a = run_merge(cfg, tmp_path / "a", MergeOptions(progress=False, chunk_bytes=256))
    b = run_merge(cfg, tmp_path / "b", QUIET)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_sharded_inputs_and_outputs(fam, tmp_path):
    sharded = tmp_path / "sharded_base"
    AutoModelForCausalLM.from_pretrained(fam["base"]).save_pretrained(sharded, max_shard_size="20KB")
    shutil.copy(fam["base"] / "tokenizer.json", sharded)
    assert (sharded / "model.safetensors.index.json").is_file()
    cfg = ota_cfg(fam, threshold=1e-14)
    cfg["base_model"] = str(sharded)
    out = run_merge(parse_config(cfg), tmp_path / "out", MergeOptions(progress=False, out_shard_bytes=8_000))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    ref = run_merge(parse_config(ota_cfg(fam, threshold=1e-14)), tmp_path / "ref", QUIET)
    got, want = tensors(out), tensors(ref)
    assert list(got) == list(want) and all(torch.equal(got[n], want[n]) for n in got)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size > 0 and (out / "tokenizer.json").is_file()


def test_dare_is_deterministic_per_seed(fam, tmp_path):
    cfg = {"merge_method": "dare_ties", "base_model": str(fam["base"]), "dtype": "bfloat16",
           "models": [{"model": str(fam[f"expert{i}"]), "parameters": {"weight": 1.0, "density": 0.5}}
                      for i in range(3)]}
    runs = [run_merge(parse_config(cfg), tmp_path / f"r{i}", MergeOptions(progress=False, seed=s))
            for i, s in enumerate((7, 7, 8))]
    data = [(r / "model.safetensors").read_bytes() for r in runs]
    assert data[0] == data[1] and data[0] != data[2]
    assert json.loads((runs[0] / "config.json").read_text())["dtype"] == "bfloat16"


def test_tokenizer_union_of_identical_tokenizers_is_copied_and_a_token_without_a_row_refused(fam, tmp_path):
    cfg = ota_cfg(fam)
    cfg["tokenizer_source"] = "union"
    out = run_merge(parse_config(cfg), tmp_path / "u", QUIET)
    assert (out / "tokenizer.json").read_bytes() == (fam["base"] / "tokenizer.json").read_bytes()
    other = tmp_path / "other"
    shutil.copytree(fam["expert2"], other)
    tj = json.loads((other / "tokenizer.json").read_text())
    tj["model"]["vocab"]["<extra>"] = len(tj["model"]["vocab"])
    (other / "tokenizer.json").write_text(json.dumps(tj))
    cfg["models"][2]["model"] = str(other)
    cfg["models"][2]["parameters"]["preconditioner_path"] = str(other / MOMENTS)
    with pytest.raises(Exception, match=f"model {other}'s tokenizer has token '<extra>' with id 77 but"):
        run_merge(parse_config(cfg), tmp_path / "bad", QUIET)
    assert not (tmp_path / "bad").exists()


# --- bad input: one line naming model, file and tensor; exit 1; no output folder -------

def _broken(fam, tmp_path, which):
    """A copy of expert0 (weights and moments), broken in one way."""
    bad = tmp_path / "bad_expert"
    shutil.copytree(fam["expert0"], bad)
    w = load_file(bad / "model.safetensors")
    m = load_file(bad / MOMENTS)
    name = "model.layers.1.self_attn.q_proj.weight"
    if which == "shape":
        w[name] = w[name][:, :-1].contiguous()
    elif which == "missing":
        del w[name]
    elif which == "moment_missing":
        del m[name]
    elif which in ("nan", "inf", "negative"):
        m[name][0, 0] = {"nan": float("nan"), "inf": float("inf"), "negative": -1.0}[which]
    save_file(w, str(bad / "model.safetensors"), metadata={"format": "pt"})
    save_file(m, str(bad / MOMENTS))
    if which == "truncated":
        data = (bad / "model.safetensors").read_bytes()
        (bad / "model.safetensors").write_bytes(data[: len(data) - 100])
    return bad, name


@pytest.mark.parametrize("which,message", [
    ("shape", "model {bad}: tensor {name} in {bad}/model.safetensors has shape [16, 15]"),
    ("missing", "model {bad}: tensor {name} missing"),
    ("moment_missing", "moments of model {bad}: tensor {name} missing from moments file {bad}/" + MOMENTS),
    ("nan", "moments of model {bad}: moments tensor {name} in {bad}/" + MOMENTS + " has NaN or Inf"),
    ("inf", "has NaN or Inf values"),
    ("negative", "moments tensor {name} in {bad}/" + MOMENTS + " has negative values"),
    ("truncated", "model {bad}: {bad}/model.safetensors is not a valid safetensors file"),
])
def test_bad_inputs_fail_with_one_line_and_no_output(fam, tmp_path, capsys, which, message):
    bad, name = _broken(fam, tmp_path, which)
    cfg = ota_cfg(fam, threshold=1e-14)
    cfg["models"][0] = {"model": str(bad), "parameters": {"preconditioner_path": str(bad / MOMENTS)}}
    (tmp_path / "c.yml").write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(tmp_path / "c.yml"), str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("otamerge: error: ")
    assert message.format(bad=bad, name=name) in err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("change,message", [
    (lambda c: c.update(merge_method="slerpy"), "unknown merge_method 'slerpy'"),
    (lambda c: c["parameters"].update(powr=2), "unknown parameter 'powr' for merge_method ota"),
    (lambda c: c["models"][1]["parameters"].pop("preconditioner_path"), "ota needs parameter 'preconditioner_path'"),
    (lambda c: c["models"][1]["parameters"].update(preconditioner_path="nowhere.safetensors"),
     "preconditioner_path nowhere.safetensors not found"),
    (lambda c: c["parameters"].update(masked_task_vector_merge_method="mean"), "is not one of precond, linear, ties"),
    (lambda c: c["parameters"].update(ties_density=1.5), "ties_density=1.5 is outside (0, 1]"),
    (lambda c: c.update(merge_method="ties", parameters={}, models=[
        {"model": m["model"], "parameters": {"weight": 1, "density": 0}} for m in c["models"]]),
     "density=0.0 is outside (0, 1]"),
    (lambda c: c.update(dtype="float8"), "unknown dtype 'float8'"),
])
def test_bad_configs_fail_with_one_line_and_no_output(fam, tmp_path, capsys, change, message):
    cfg = ota_cfg(fam)
    change(cfg)
    (tmp_path / "c.yml").write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(tmp_path / "c.yml"), str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_papers_config_style_parses_unchanged():
    raw = yaml.safe_load("""
merge_method: ota
base_model: meta-llama/Meta-Llama-3.1-8B
parameters:
  epsilon: 1e-26 # Default epsilon for OTA, can be tuned
  normalise: none
  power: 0.5
  fallback_to_base: true
  rescale: false
models:
  - model: pmahdavi/Llama-3.1-8B-math-reasoning
    parameters:
      preconditioner_path: pmahdavi/Llama-3.1-8B-math-reasoning/export/exp_avg_sq.safetensors
      precond_threshold:  2.626e-19
  - model: pmahdavi/Llama-3.1-8B-precise-if
    parameters:
      preconditioner_path: pmahdavi/Llama-3.1-8B-precise-if/export/exp_avg_sq.safetensors
      rank1_approx: true
dtype: bfloat16
tokenizer_source: union
""")
    cfg = parse_config(raw)
    assert cfg.params["epsilon"] == 1e-26 and cfg.dtype == torch.bfloat16
    assert [m.params["precond_threshold"] for m in cfg.models] == [2.626e-19, None]
    assert [m.params["rank1_approx"] for m in cfg.models] == [False, True]


def test_hub_style_preconditioner_paths_split_into_repo_and_file():
    from otamerge.io.resolve import split_hub_path

    assert split_hub_path("pmahdavi/Llama-3.1-8B-math-reasoning/export/exp_avg_sq.safetensors") == (
        "pmahdavi/Llama-3.1-8B-math-reasoning", "export/exp_avg_sq.safetensors")
    assert split_hub_path("owner/repo:export_full_state_checkpoint-1100/exp_avg_sq.safetensors") == (
        "owner/repo", "export_full_state_checkpoint-1100/exp_avg_sq.safetensors")
    assert split_hub_path("./local/dir/file.safetensors") is None
    assert split_hub_path("file.safetensors") is None


def test_tokenizer_source_names_a_model(fam, tmp_path):
    other = tmp_path / "expert2_tok"
    shutil.copytree(fam["expert2"], other)
    (other / "tokenizer_config.json").write_text(
        (other / "tokenizer_config.json").read_text().replace('"model_max_length": 64', '"model_max_length": 32'))
    cfg = ota_cfg(fam)
    cfg["models"][2] = {"model": str(other), "parameters": {"preconditioner_path": str(other / MOMENTS)}}
    cfg["tokenizer_source"] = str(other)
    out = run_merge(parse_config(cfg), tmp_path / "o", QUIET)
    assert (out / "tokenizer_config.json").read_bytes() == (other / "tokenizer_config.json").read_bytes()
    assert (out / "tokenizer_config.json").read_bytes() != (fam["base"] / "tokenizer_config.json").read_bytes()


def test_cuda_requested_without_cuda_is_a_clear_error(fam, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from otamerge.errors import OtaMergeError

    with pytest.raises(OtaMergeError, match="device cuda requested but CUDA is not available"):
        run_merge(parse_config(ota_cfg(fam)), tmp_path / "o", MergeOptions(device="cuda", progress=False))


@pytest.mark.parametrize("method", ["ties", "dare_ties", "breadcrumbs_ties", "task_arithmetic", "multislerp", "sce"])
def test_in_place_merging_of_owned_inputs_gives_the_same_bits_and_spares_borrowed_ones(method):
    """The engine lets methods overwrite its own fresh copies (less memory); tensors a
    caller lends (owned=False) come back untouched, and the result is the same."""
    from otamerge.methods.registry import IMPLEMENTATIONS
    from otamerge.methods.base import TensorInputs

    g = torch.Generator().manual_seed(4)
    base = torch.randn(64, 33, generator=g)
    models = [base + 0.01 * torch.randn(64, 33, generator=g) for _ in range(3)]
    copies = [m.clone() for m in models]
    mp = [{"weight": w, "density": 0.3, "gamma": 0.01} for w in (1.0, 0.5, 0.25)]
    params = {"normalize": True, "rescale": method == "dare_ties", "lambda": 1.0, "int8_mask": False,
              "normalize_weights": True, "eps": 1e-8, "select_topk": 0.3}
    merge = IMPLEMENTATIONS[method].merge
    lent = merge(TensorInputs("w", base, models, [None] * 3, mp, params, seed=2))
    assert all(torch.equal(m, c) for m, c in zip(models, copies))
    owned = merge(TensorInputs("w", base.clone(), copies, [None] * 3, mp, params, seed=2, owned=True))
    assert torch.equal(lent.view(torch.int32), owned.view(torch.int32))


def test_top_k_of_a_large_tensor_by_radix_select_equals_kthvalue_with_ties():
    """Above RADIX_MIN entries the k-th value comes from the radix select and ties are
    found slice by slice: the masks equal the kthvalue path's, ties to lower indices."""
    from otamerge.methods import sparsify

    g = torch.Generator().manual_seed(0)
    v = (torch.randn(sparsify.RADIX_MIN + 12345, generator=g) * 0.01).bfloat16().float().abs()  # many ties
    v[:1000] = 0
    for k in (1, 17, int(0.3 * v.numel()), v.numel() - 1):
        radix = sparsify.top_k_mask(v, k), sparsify.bottom_k_mask(v, k)
        small = sparsify.RADIX_MIN
        try:
            sparsify.RADIX_MIN = v.numel() + 1
            direct = sparsify.top_k_mask(v, k), sparsify.bottom_k_mask(v, k)
        finally:
            sparsify.RADIX_MIN = small
        assert torch.equal(radix[0], direct[0]) and torch.equal(radix[1], direct[1]), k
        assert int(radix[0].sum()) == k == int(radix[1].sum())
        thr = v[radix[0]].min()
        ties = torch.nonzero(v == thr).flatten()
        kept_ties = ties[radix[0][ties]]
        assert torch.equal(kept_ties, ties[: kept_ties.numel()])  # the lowest indices first
