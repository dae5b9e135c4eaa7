"""TSV-M, Iso-C, Iso-CTS and RegMean of otamerge against FusionBench's own functions, same inputs.

    .venv/bin/python benchmarks/fusionbench_agreement.py OUT [--fusion-bench .venv-fusionbench/bin/python]

FusionBench (PyPI ``fusion-bench``) merges whole state dicts in memory; its requirements
are its own, so it lives in a separate venv:

    make .venv-fusionbench/.installed   # fusion-bench 0.2.33 and torch 2.13.0

Builds a small Llama-shaped family (benchmarks/synthetic.py: base and 3 experts, bf16,
vocabulary 512, hidden 64, 2 layers), merges it with each method through ``otamerge merge``
(fp32 arithmetic and output), runs FusionBench's ``compute_and_sum_svd_mem_reduction``,
``iso_c`` and ``iso_cts`` on the same fp32 task vectors in its venv (CPU), adds the base
and the method's scale. RegMean: each expert gets Gram matrices X^T X of random inputs of its
own (seeded; 4 x the layer's input width rows, a different scale per expert) for every 2-D
weight but the embeddings, written as its ``gram_path``; FusionBench's
``merging_with_regmean_weights`` gets the same matrices (keyed by module name, as its hooks
key them) and the fp32 weights. Prints per method the largest difference in fp32 units in the
last place of the inputs (at each entry, of the largest of the base's and the experts'
values there: where the merged value is near zero its own ulp is not the scale of the
arithmetic's error) and the tensor where it is, and the largest difference relative to the
tensor's largest merged change.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import write_family  # noqa: E402

from otamerge.merge import MergeOptions, merge_file  # noqa: E402

# method -> its parameters here, and the FusionBench call on task vectors ``tvs``
CASES = {
    "tsv_m": ({"alpha": 1.0}, "TSVM_utils.compute_and_sum_svd_mem_reduction(tvs, exclude_keys=[], accelerator='cpu')"),
    "iso_c": ({"scaling_factor": 1.0}, "iso_c(tvs, accelerator='cpu')"),
    "iso_cts": ({"scaling_factor": 1.0, "common_space_fraction": 0.8},
                "iso_cts(tvs, common_space_fraction=0.8, accelerator='cpu')"),
}

# run in FusionBench's venv: argv = family folder, gram files (comma-separated), output file
THEIRS_REGMEAN = """
import sys
from collections import defaultdict
from safetensors.torch import load_file, save_file
from fusion_bench.method.regmean.regmean import merging_with_regmean_weights

family, grams, out = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
params = defaultdict(list)
for i in range(3):
    for k, v in load_file(f"{family}/expert{i}/model.safetensors").items():
        params[k].append(v.float())
weights = [{k[: -len(".weight")]: v for k, v in load_file(g).items()} for g in grams]
merged = merging_with_regmean_weights(dict(params), weights, reduce_non_diagonal_ratio=float(sys.argv[4]))
save_file({k: v.contiguous() for k, v in merged.items()}, out)
"""

# run in FusionBench's venv: argv = family folder, method call, scale, output file
THEIRS = """
import sys
import torch
from safetensors.torch import load_file, save_file
from fusion_bench.method.isotropic_merging.iso_utils import iso_c, iso_cts
from fusion_bench.method.task_singular_vector.utils import TSVM_utils

family, call, scale, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
base = {k: v.float() for k, v in load_file(f"{family}/base/model.safetensors").items()}
tvs = [{k: v.float() - base[k] for k, v in load_file(f"{family}/expert{i}/model.safetensors").items()}
       for i in range(3)]
merged = eval(call)
save_file({k: (base[k] + scale * merged[k]).contiguous() for k in base}, out)
"""


def input_ulps(ours: torch.Tensor, theirs: torch.Tensor, inputs: list[torch.Tensor]) -> float:
    """max |ours - theirs| in fp32 ulps of the largest input magnitude at each entry."""
    mag = torch.stack([t.double().abs() for t in inputs]).amax(dim=0).clamp_min(torch.finfo(torch.float32).tiny)
    return float(((ours.double() - theirs.double()).abs() / torch.pow(2.0, torch.frexp(mag).exponent.double() - 24)).max())


def write_grams(models: list[dict[str, torch.Tensor]], out: Path) -> list[str]:
    """Per expert, X^T X (fp32) of seeded random inputs for every 2-D weight but the embeddings."""
    gen = torch.Generator().manual_seed(0)
    paths = []
    for i, model in enumerate(models):
        grams = {}
        for k, w in model.items():
            if w.dim() == 2 and "embed" not in k:
                x = torch.randn(4 * w.shape[1], w.shape[1], generator=gen, dtype=torch.float64) * (1 + i)
                grams[k] = (x.T @ x).float()
        paths.append(str(out / f"gram{i}.safetensors"))
        save_file(grams, paths[-1])
    return paths


def regmean_fp64(experts: list[dict], grams: list[dict], ratio: float) -> dict[str, torch.Tensor]:
    """RegMean of the weights with Gram matrices, in fp64 from the same inputs (the exact solve)."""
    out = {}
    for k in grams[0]:
        g = [gi[k].double() * ratio + torch.diag(torch.diagonal(gi[k].double()) * (1 - ratio)) for gi in grams]
        rhs = sum(gi @ e[k].double().T for gi, e in zip(g, experts))
        out[k] = torch.linalg.solve(sum(g), rhs).T
    return out


def max_ulps(merged: dict, exact: dict, models: list[dict]) -> float:
    return max(input_ulps(merged[k], exact[k], [m[k] for m in models]) for k in exact)


def report(method: str, ours: dict, theirs: dict, models: list[dict], reference: dict) -> None:
    """One table row: the worst entry in input ulps, and relative to the largest change from the base."""
    worst = {k: input_ulps(ours[k], theirs[k], [m[k] for m in models]) for k in theirs}
    where = max(worst, key=worst.get)
    relative = max(float((ours[k] - theirs[k]).abs().max() / (theirs[k] - reference[k].float()).abs().max())
                   for k in theirs)
    print(f"| {method} | {worst[where]:.3g} | {where} | {relative:.2g} | {len(worst)} |")


def ours_merged(out: Path, method: str, family: dict, params: dict, model_params: list[dict] | None = None) -> dict:
    config = out / f"{method}.yml"
    config.write_text(yaml.safe_dump({
        "merge_method": method, "base_model": str(family["base"]), "parameters": params,
        "models": [{"model": str(family[f"expert{i}"]), "parameters": (model_params or [{}] * 3)[i]}
                   for i in range(3)],
        "dtype": "float32", "out_dtype": "float32"}))
    return load_file(str(merge_file(config, out / method, MergeOptions(progress=False)) / "model.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--fusion-bench", default=".venv-fusionbench/bin/python", help="python of FusionBench's venv")
    args = ap.parse_args()
    family = write_family(args.out / "family", 3, layers=2, hidden=64, intermediate=176, vocab=512, moments=False)
    models = [load_file(str(family[m] / "model.safetensors")) for m in ("base", "expert0", "expert1", "expert2")]
    print("| method | max ulp of the inputs (fp32) | where | max difference / max change | tensors |\n"
          "| --- | --- | --- | --- | --- |")
    for method, (params, call) in CASES.items():
        ours = ours_merged(args.out, method, family, params)
        theirs_file = args.out / f"{method}.fusion_bench.safetensors"
        scale = params.get("alpha", params.get("scaling_factor"))
        subprocess.run([args.fusion_bench, "-c", THEIRS, str(args.out / "family"), call, str(scale), str(theirs_file)],
                       check=True)
        report(method, ours, load_file(str(theirs_file)), models, models[0])
    grams = write_grams(models[1:], args.out)
    for ratio in (1.0, 0.6):
        ours = ours_merged(args.out, "regmean", family, {"reduce_non_diagonal_ratio": ratio},
                           [{"gram_path": g} for g in grams])
        theirs_file = args.out / f"regmean{ratio}.fusion_bench.safetensors"
        subprocess.run([args.fusion_bench, "-c", THEIRS_REGMEAN, str(args.out / "family"), ",".join(grams),
                        str(theirs_file), str(ratio)], check=True)
        theirs = load_file(str(theirs_file))
        report(f"regmean (ratio {ratio})", ours, theirs, models, models[0])
        exact = regmean_fp64(models[1:], [load_file(g) for g in grams], ratio)
        print(f"|   regmean (ratio {ratio}) against the fp64 solve | ours {max_ulps(ours, exact, models):.3g}, "
              f"FusionBench {max_ulps(theirs, exact, models):.3g} | | | {len(exact)} |")


if __name__ == "__main__":
    main()
