"""Agreement with PyPI mergekit==0.1.5 on tiny random Llama checkpoints.

mergekit lives in its own virtual environment (`make test` creates .venv-mergekit); the
tests find `mergekit-yaml` there or through MERGEKIT_YAML, and run its command
(in its venv's python) once for all configs. CI sets
OTAMERGE_REQUIRE_MERGEKIT=1 so that a missing mergekit fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from checkpoints import make_family
from conftest import REPO
from otamerge.config import parse_config
from otamerge.merge import MergeOptions, run_merge

MERGEKIT = Path(os.environ.get("MERGEKIT_YAML", REPO / ".venv-mergekit/bin/mergekit-yaml"))
if not MERGEKIT.is_file():
    if os.environ.get("OTAMERGE_REQUIRE_MERGEKIT"):
        raise RuntimeError(f"mergekit-yaml not found at {MERGEKIT}")
    pytest.skip("mergekit 0.1.5 not installed (make test installs it)", allow_module_level=True)

WEIGHTS = (0.5, 0.3, 0.7)
CASES = {  # method: per-model extra parameters (density 1.0 unless given)
    "linear": {},
    "task_arithmetic": {},
    "ties": {},
    "dare_ties": {},
    "dare_linear": {},
    "breadcrumbs": {},
    "breadcrumbs_ties": {},
    "ties@0.4": {"density": 0.4},
    "breadcrumbs@0.5": {"density": 0.5, "gamma": 0.05},
    "breadcrumbs_ties@0.5": {"density": 0.5, "gamma": 0.05},
    "multislerp": {},
    "multislerp@nobase": {},
    "sce": {},
    "sce@0.3": {"density": 0.9},
    "slerp": {},  # the base and expert0 at t 0.3 (slerp takes exactly two models)
    "slerp@0.8": {},
    "nearswap": {},  # the base and expert0 (two models, like slerp)
    "model_stock": {},
    "model_stock@rows": {},
    "karcher@nobase": {},
    "nuslerp": {},  # expert0 and expert1 (two models besides the base), weights 0.5 and 0.3
    "nuslerp@nobase": {},
    "nuslerp@rows": {},
    "nuslerp@lastdim": {},
    "passthrough@nobase": {"scale": 0.5},  # one model (expert0)
    "ram": {},
    "ram@0.02": {},
    "ramplus_tl@0.02": {},
    "della": {},  # density 1: no random drop (test_della.py checks the drop's distribution against mergekit's)
    "della_linear": {},
    # gradients over the four layers and filters by tensor name (mergekit's own YAML forms)
    "linear@gradient": {"weight": [0.2, 0.6, 1.0]},
    "ties@gradient": {"density": [0.3, 0.9], "weight": [{"filter": "mlp", "value": [0.2, 1.0]}, {"value": 0.6}]},
    "slerp@gradient": {},  # t as mergekit's examples/gradient-slerp.yml gives it
    "arcee_fusion": {},  # the base and expert0, like slerp (tensors under 10^6 entries: exact quartiles)  # (mergekit 0.1.5 ignores density for sce, as the paper's config gives it)
}
GLOBAL = {"sce@0.3": {"select_topk": 0.3}, "slerp": {"t": 0.3}, "slerp@0.8": {"t": 0.8},
          "slerp@gradient": {"t": [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                                   {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]},
          "nearswap": {"t": 0.01}, "model_stock@rows": {"filter_wise": True},
          "nuslerp@rows": {"nuslerp_flatten": False, "nuslerp_row_wise": True},
          "nuslerp@lastdim": {"nuslerp_flatten": False},
          "ram@0.02": {"epsilon": 0.02}, "ramplus_tl@0.02": {"epsilon": 0.02, "r": 0.5, "alpha": 0.9}}  # case: global parameters


def _sliced(family) -> dict[str, dict]:
    """mergekit's slices: layers stacked from two models (passthrough), examples/gradient-slerp.yml's
    form, and a linear merge whose two slices differ in models and in slice-level parameters."""
    def src(model, start, end, **params):
        return {"model": str(family[model]), "layer_range": [start, end], **({"parameters": params} if params else {})}
    common = {"dtype": "float32"}
    return {
        "passthrough": {"merge_method": "passthrough", **common,
                        "slices": [{"sources": [src("expert0", 0, 3)]}, {"sources": [src("expert1", 1, 4)]}]},
        "slerp": {"merge_method": "slerp", "base_model": str(family["base"]), **common,
                  "slices": [{"sources": [src("base", 0, 4), src("expert0", 0, 4)]}],
                  "parameters": GLOBAL["slerp@gradient"]},
        "linear": {"merge_method": "linear", **common, "parameters": {"weight": 0.5},
                   "slices": [{"sources": [src("expert0", 0, 2, weight=0.3), src("expert1", 0, 2, weight=0.7)],
                               "parameters": {"normalize": False}},
                              {"sources": [src("expert1", 2, 4), src("expert2", 2, 4, weight=[0.2, 0.8])]}]},
    }


def _examples(family) -> dict[str, dict]:
    """mergekit's examples/ (its README's configs) with their models mapped onto a 40-layer
    family (A, B, C the experts, BASE the base) and dtype float32, where both compute alike."""
    a, b, c, base = (str(family[m]) for m in ("expert0", "expert1", "expert2", "base"))
    f32 = {"dtype": "float32"}
    return {
        "linear": {"merge_method": "linear", **f32, "models": [
            {"model": a, "parameters": {"weight": 1.0}}, {"model": b, "parameters": {"weight": 0.3}},
            {"model": c, "parameters": {"weight": 0.5}}]},
        "ties": {"merge_method": "ties", "base_model": base, **f32, "parameters": {"normalize": True, "int8_mask": True},
                 "models": [{"model": a, "parameters": {"density": [1, 0.7, 0.1], "weight": 1.0}},
                            {"model": b, "parameters": {"density": 0.5, "weight": [0, 0.3, 0.7, 1]}},
                            {"model": c, "parameters": {"density": 0.33, "weight": [{"filter": "mlp", "value": 0.5},
                                                                                     {"value": 0}]}}]},
        "bio-merge": {"merge_method": "ties", "base_model": base, **f32,
                      "parameters": {"normalize": False, "int8_mask": True},
                      "models": [{"model": a, "parameters": {"density": 0.5, "weight": 0.5}},
                                 {"model": b, "parameters": {"density": 0.5, "weight": 0.5}}]},
        "gradient-slerp": {"merge_method": "slerp", "base_model": base, **f32, "parameters": GLOBAL["slerp@gradient"],
                           "slices": [{"sources": [{"model": base, "layer_range": [0, 40]},
                                                   {"model": a, "layer_range": [0, 40]}]}]},
        "arcee_fusion": {"merge_method": "arcee_fusion", "base_model": a, **f32, "models": [{"model": a}, {"model": b}]},
        "orcamini-platy-44layer": {"merge_method": "passthrough", **f32, "slices": [
            {"sources": [{"model": base, "layer_range": [0, 24]}]}, {"sources": [{"model": a, "layer_range": [20, 40]}]}]},
    }


@pytest.fixture(scope="module")
def family40(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("family40"), n_experts=3, seed=3, layers=40, hidden=8)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    # four layers: a gradient's value at t = 0, 1/3, 2/3 and 1 falls between its endpoints
    return make_family(tmp_path_factory.mktemp("family"), n_experts=3, seed=11, layers=4)


def _config(family, case: str, out_dtype: str | None, dtype: str = "float32") -> dict:
    method = case.split("@")[0]
    models = [{"model": str(family[f"expert{i}"]),
               "parameters": {} if method in ("model_stock", "karcher", "ram", "ramplus_tl")
               else {"weight": w, **CASES[case]}}
              for i, w in enumerate(WEIGHTS)]
    if method == "nuslerp":
        models = models[:2]
    if method == "passthrough":
        models = [{"model": str(family["expert0"]), "parameters": CASES[case]}]
    if method in ("slerp", "nearswap", "arcee_fusion"):  # mergekit's way of writing it: both models listed, one of them the base
        models = [{"model": str(family["base"])}, {"model": str(family["expert0"])}]
    cfg = {"merge_method": method, "models": models, "dtype": dtype, "parameters": GLOBAL.get(case, {})}
    if method != "linear" and not case.endswith("nobase"):
        cfg["base_model"] = str(family["base"])
    if out_dtype:
        cfg["out_dtype"] = out_dtype
    return cfg


# mergekit-yaml's own command, called once per config in one process: importing mergekit
# takes about 8 s, which 21 separate processes would pay 21 times
DRIVER = """
import sys
from mergekit.scripts import multimerge, run_yaml
args = sys.argv[1:]
for config, out in zip(args[::2], args[1::2]):
    if config.endswith(".multi.yml"):  # several merges in one file: mergekit-multi
        multimerge.main([config, "-I", out], standalone_mode=False)
    else:
        run_yaml.main([config, out], standalone_mode=False)
"""


def _mega(family) -> str:
    """mergekit's examples/mega.yml (for mergekit-multi) on the 40-layer family, float32:
    gradient-slerp, then a TIES merge that reads it by name."""
    a, b, base = (str(family[m]) for m in ("expert0", "expert1", "base"))
    first = {**_examples(family)["gradient-slerp"], "name": "gradient-slerp"}
    second = {"merge_method": "ties", "base_model": base, "dtype": "float32", "name": "gradient-slerp-ties",
              "parameters": {"normalize": True, "int8_mask": True},
              "models": [{"model": "gradient-slerp", "parameters": {"density": [1, 0.7, 0.1], "weight": 1.0}},
                         {"model": b, "parameters": {"density": 0.33, "weight": [{"filter": "mlp", "value": 0.5},
                                                                                  {"value": 0}]}}]}
    return yaml.safe_dump_all([first, second])


@pytest.fixture(scope="module")
def bf16_family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("bf16"), n_experts=3, seed=5, dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def mergekit(family, bf16_family, family40, tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    """Every config of this module, merged by mergekit-yaml 0.1.5: key -> (config, output)."""
    cfgs = {f"{case}-{out}": _config(family, case, out) for case in CASES for out in (None, "bfloat16")}
    cfgs["bf16-compute"] = _config(bf16_family, "task_arithmetic", None, dtype="bfloat16")
    cfgs.update({f"sliced-{k}": cfg for k, cfg in _sliced(family).items()})
    cfgs.update({f"example-{k}": cfg for k, cfg in _examples(family40).items()})
    root = tmp_path_factory.mktemp("mergekit")
    args = []
    for key, cfg in cfgs.items():
        (root / f"{key}.yml").write_text(yaml.safe_dump(cfg))
        args += [str(root / f"{key}.yml"), str(root / key)]
    (root / "mega.multi.yml").write_text(_mega(family40))
    args += [str(root / "mega.multi.yml"), str(root / "mega")]
    cfgs["mega"] = {}
    res = subprocess.run([str(MERGEKIT.parent / "python"), "-c", DRIVER, *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return {key: (cfg, root / key) for key, cfg in cfgs.items()}


def _both(mergekit, tmp_path, key) -> tuple[dict, dict]:
    cfg, mk_out = mergekit[key]
    run_merge(parse_config(cfg), tmp_path / "ours", MergeOptions(progress=False))
    theirs = {}
    for f in sorted(mk_out.glob("*.safetensors")):
        theirs.update(load_file(f))
    assert theirs, f"mergekit wrote no tensors for {key}"
    return load_file(tmp_path / "ours/model.safetensors"), theirs


def ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in units of the last place of the output dtype (at the larger magnitude)."""
    bits = {torch.float32: 24, torch.bfloat16: 8, torch.float16: 11}[a.dtype]
    x, y = a.double(), b.double()
    mag = torch.maximum(x.abs(), y.abs()).clamp_min(torch.finfo(a.dtype).tiny)
    ulp = torch.pow(2.0, torch.frexp(mag).exponent.double() - bits)
    return (x - y).abs() / ulp


@pytest.mark.parametrize("out_dtype", [None, "bfloat16"])
@pytest.mark.parametrize("case", list(CASES))
def test_equal_to_mergekit_within_one_ulp(mergekit, tmp_path, case, out_dtype):
    ours, theirs = _both(mergekit, tmp_path, f"{case}-{out_dtype}")
    assert set(ours) == set(theirs)
    worst = max(float(ulps(ours[k], theirs[k]).max()) for k in ours)
    diff = max(float((ours[k].double() - theirs[k].double()).abs().max()) for k in ours)
    print(f"{case} out={out_dtype or 'float32'}: max abs diff {diff:.3g}, max {worst:.2f} ulp")
    assert all(ours[k].dtype == theirs[k].dtype for k in ours)
    assert worst <= 1.0


def test_bf16_compute_is_closer_to_fp64_than_mergekits(mergekit, bf16_family, tmp_path):
    """At dtype: bfloat16 mergekit rounds every intermediate of task arithmetic to bf16;
    we compute in fp32 and round once, which is closer to the exact (fp64) result."""
    fam = bf16_family
    ours, theirs = _both(mergekit, tmp_path, "bf16-compute")
    base = load_file(fam["base"] / "model.safetensors")
    experts = [load_file(fam[f"expert{i}"] / "model.safetensors") for i in range(3)]
    err_ours = err_theirs = 0.0
    for k in base:
        exact = base[k].double() + sum(w * (e[k].double() - base[k].double()) for w, e in zip(WEIGHTS, experts))
        err_ours += float((ours[k].double() - exact).abs().sum())
        err_theirs += float((theirs[k].double() - exact).abs().sum())
    print(f"bf16 task_arithmetic: total abs error vs fp64, ours {err_ours:.4g}, mergekit {err_theirs:.4g}")
    assert err_ours < err_theirs


@pytest.mark.parametrize("case", ["passthrough", "slerp", "linear"])
def test_slices_equal_to_mergekit_within_one_ulp(mergekit, tmp_path, case):
    ours, theirs = _both(mergekit, tmp_path, f"sliced-{case}")
    assert set(ours) == set(theirs)
    assert max(float(ulps(ours[k], theirs[k]).max()) for k in ours) <= 1.0
    layers = json.loads((tmp_path / "ours/config.json").read_text())["num_hidden_layers"]
    assert layers == json.loads((mergekit[f"sliced-{case}"][1] / "config.json").read_text())["num_hidden_layers"]
    assert layers == {"passthrough": 6, "slerp": 4, "linear": 4}[case]


@pytest.mark.parametrize("example", ["linear", "ties", "bio-merge", "gradient-slerp", "arcee_fusion",
                                     "orcamini-platy-44layer"])
def test_mergekits_examples_equal_to_mergekit_within_one_ulp(mergekit, tmp_path, example):
    ours, theirs = _both(mergekit, tmp_path, f"example-{example}")
    assert set(ours) == set(theirs)
    assert max(float(ulps(ours[k], theirs[k]).max()) for k in ours) <= 1.0
    layers = json.loads((tmp_path / "ours/config.json").read_text())["num_hidden_layers"]
    assert layers == (44 if example == "orcamini-platy-44layer" else 40)


def test_mergekits_mega_example_equal_to_mergekit_multi_within_one_ulp(mergekit, tmp_path):
    from otamerge.multimerge import run_documents

    cfg_file = mergekit["mega"][1].parent / "mega.multi.yml"
    steps = run_documents(cfg_file, tmp_path / "ours", opts=MergeOptions(progress=False))
    assert [s.name for s in steps] == ["gradient-slerp", "gradient-slerp-ties"]
    for name in ("gradient-slerp", "gradient-slerp-ties"):
        ours = load_file(tmp_path / "ours" / name / "model.safetensors")
        theirs = {}
        for f in sorted((mergekit["mega"][1] / name).glob("*.safetensors")):
            theirs.update(load_file(f))
        assert set(ours) == set(theirs) and theirs
        worst = max(float(ulps(ours[k], theirs[k]).max()) for k in ours)
        print(f"mega.yml {name}: max {worst:.2f} ulp")
        assert worst <= 1.0
