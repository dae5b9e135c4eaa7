"""The engine on CUDA next to CPU: same inputs, each step timed on each device, outputs compared.

    python benchmarks/gpu_check.py OUT [--params 1e9] [--devices cuda cpu] [--experts 3]

Builds a synthetic Llama-shaped family (bf16 weights, fp32 moments; benchmarks/synthetic.py)
of about ``--params`` parameters, then on each device: a 3-density FFG sweep of one expert
(fisher metric), each expert's FFG threshold at density 0.1, OTA+FFG with full moments and
with rank-1 moments (compressed once, on CPU), TIES, linear, and the empirical Fisher of one
expert (fp32, 8 windows of 128 tokens). Prints one Markdown table: step, device, wall
seconds, peak GPU memory; then, per step, the largest difference between the devices'
outputs in units in the last place of the output's dtype at that value. Files land in OUT
(removed per step once compared unless --keep). benchmarks/gpu_check.sh runs it on a GPU
machine; tests/test_gpu_check.py runs its CPU half on a small family.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import llama_shapes, n_params, write_family  # noqa: E402

from otamerge.curvature.fisher import FisherCalibration, write_fisher  # noqa: E402
from otamerge.curvature.moments import Moments, compress  # noqa: E402
from otamerge.ffg.graft import FfgOptions, ffg_graft  # noqa: E402
from otamerge.merge import MergeOptions, merge_file  # noqa: E402

DENSITIES = (0.01, 0.05, 0.1)


def dims(params: float) -> dict:
    """layers, hidden, intermediate, vocab of a Llama-shaped model of about ``params`` parameters
    (1e9: 16 layers of hidden 2048, intermediate 5632, vocabulary 32000)."""
    scale = max(params / 0.95e9, 1e-6) ** 0.5
    hidden = max(64, int(2048 * scale) // 64 * 64)
    return {"layers": 16 if params >= 1e8 else 2, "hidden": hidden, "intermediate": hidden * 11 // 4,
            "vocab": 32000 if params >= 1e8 else 512}


def ulps(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in units in the last place of their dtype at max(|a|, |b|)."""
    if a.shape != b.shape:
        return math.inf
    mant = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}.get(a.dtype, 52)
    x, y = a.double(), b.double()
    big = torch.maximum(x.abs(), y.abs()).clamp_min(torch.finfo(a.dtype).tiny)
    return float(((x - y).abs() / torch.exp2(torch.floor(torch.log2(big)) - mant)).max())


def tensors(folder: Path) -> dict[str, Path]:
    return {name: f for f in sorted(folder.rglob("*.safetensors")) for name in safe_open(str(f), "pt").keys()}


def largest_difference(a: Path, b: Path) -> float:
    ta, tb = tensors(a), tensors(b)
    if set(ta) != set(tb):
        return math.inf
    worst = 0.0
    for name in ta:
        with safe_open(str(ta[name]), "pt") as fa, safe_open(str(tb[name]), "pt") as fb:
            worst = max(worst, ulps(fa.get_tensor(name), fb.get_tensor(name)))
    return worst


def timed(device: str, step) -> tuple[float, float | None]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30
    return time.perf_counter() - start, None


def merge_yaml(method: str, fam: dict, experts: list[str], params: dict, per_model: dict[str, dict]) -> dict:
    return {"merge_method": method, "base_model": str(fam["base"]), "dtype": "bfloat16",
            "parameters": params,
            "models": [{"model": str(fam[e]), "parameters": per_model.get(e, {})} for e in experts]}


def steps(fam: dict, experts: list[str], rank1: dict[str, Path], root: Path, device: str, quiet: bool,
          thresholds: dict[str, float], calibration: Path) -> dict:
    """name -> (a callable that runs the step on ``device``, the folder it writes). The merges
    of every device read ``thresholds``, which the first device's threshold step fills, so
    that they differ only in where they ran."""
    moments = {e: fam[e] / "export/exp_avg_sq.safetensors" for e in experts}
    ffg = FfgOptions(device=device, progress=not quiet)
    opts = MergeOptions(device=device, progress=not quiet)

    def sweep():
        ffg_graft(fam["base"], fam[experts[0]], moments[experts[0]],
                  {d: root / "sweep" / str(d) for d in DENSITIES}, "fisher", ffg)

    def grafts():  # each expert's threshold at density 0.1, for OTA+FFG
        for e in experts:
            ffg_graft(fam["base"], fam[e], moments[e], {0.1: root / "grafts" / e}, "fisher", ffg)
            stats = json.loads((root / "grafts" / e / "statistics.json").read_text())
            thresholds.setdefault(e, stats["threshold"])

    def merge(name: str, method: str, params: dict, per_model):
        def run():
            root.mkdir(parents=True, exist_ok=True)
            cfg = root / f"{name}.yml"
            cfg.write_text(yaml.safe_dump(merge_yaml(method, fam, experts, params, per_model())))
            merge_file(cfg, root / name, opts)
        return run

    ota = {"epsilon": 1e-26, "power": 1.0}
    return {
        "ffg sweep (3 densities, 1 expert)": (sweep, root / "sweep"),
        "ffg thresholds (density 0.1, every expert)": (grafts, root / "grafts"),
        "ota_ffg": (merge("ota_ffg", "ota", ota, lambda: {
            e: {"preconditioner_path": str(moments[e]), "precond_threshold": thresholds[e]} for e in experts}),
            root / "ota_ffg"),
        "ota_ffg_rank1": (merge("ota_ffg_rank1", "ota", ota, lambda: {
            e: {"preconditioner_path": str(rank1[e]), "precond_threshold": thresholds[e]} for e in experts}),
            root / "ota_ffg_rank1"),
        "ties": (merge("ties", "ties", {"density": 0.1}, lambda: {e: {"weight": 1.0} for e in experts}),
                 root / "ties"),
        "linear": (merge("linear", "linear", {}, lambda: {e: {"weight": 1.0} for e in experts}), root / "linear"),
        "empirical fisher (1 expert, 8 x 128 tokens)": (lambda: write_fisher(
            fam[experts[0]], root / "fisher" / "fisher.safetensors",
            FisherCalibration(path=str(calibration), samples=8, seqlen=128), device, not quiet),
            root / "fisher"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--params", type=float, default=1e9, help="parameters per model (default 1e9)")
    p.add_argument("--experts", type=int, default=3)
    p.add_argument("--devices", nargs="+", default=["cuda", "cpu"])
    p.add_argument("--keep", action="store_true", help="keep every output")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if any(d.startswith("cuda") for d in args.devices) and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here", file=sys.stderr)
        return 2
    shutil.rmtree(args.out, ignore_errors=True)
    start = time.perf_counter()
    d = dims(args.params)
    fam = write_family(args.out / "family", args.experts, d["layers"], d["hidden"], d["intermediate"], d["vocab"])
    experts = [f"expert{i}" for i in range(args.experts)]
    from otamerge.demo.tokenizer import build_tokenizer  # a character tokenizer: ids fit any vocabulary

    build_tokenizer().save_pretrained(fam[experts[0]])
    (args.out / "calibration.txt").write_text(" ".join(f"word{i % 97} {i}" for i in range(4000)))
    rank1 = {}
    for e in experts:
        rank1[e] = args.out / "rank1" / f"{e}.safetensors"
        rank1[e].parent.mkdir(parents=True, exist_ok=True)
        mom = Moments(fam[e] / "export/exp_avg_sq.safetensors", e)
        compress(mom, mom.parameters(), rank1[e], progress=False)
        mom.close()
    n = n_params(llama_shapes(d["layers"], d["hidden"], d["intermediate"], d["vocab"]))
    print(f"family: base + {args.experts} experts of {n / 1e9:.3f}B parameters ({d}), built in "
          f"{time.perf_counter() - start:.0f} s; torch {torch.__version__}"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    thresholds: dict[str, float] = {}
    plans = [(dev, steps(fam, experts, rank1, args.out / f"{i}-{dev.replace(':', '')}", dev, args.quiet,
                         thresholds, args.out / "calibration.txt")) for i, dev in enumerate(args.devices)]
    rows = []
    for name in plans[0][1]:
        outs = []
        for dev, plan in plans:
            run, folder = plan[name]
            wall, peak = timed(dev, run)
            outs.append(folder)
            rows.append((name, dev, wall, peak))
            print(f"{name} on {dev}: {wall:.1f} s" + (f", peak GPU memory {peak:.2f} GiB" if peak else ""),
                  flush=True)
        if len(outs) == 2:
            rows.append((name, "difference", largest_difference(*outs), None))
        if not args.keep:  # a 1B family's step outputs are gigabytes each
            for folder in outs:
                shutil.rmtree(folder, ignore_errors=True)
    print("\n| step | device | wall s, or the largest difference in ulps | peak GPU GiB |\n| --- | --- | --- | --- |")
    for name, dev, value, peak in rows:
        print(f"| {name} | {dev} | {value:.1f} | {'' if peak is None else f'{peak:.2f}'} |")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if not args.keep:
        shutil.rmtree(args.out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
