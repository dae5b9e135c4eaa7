"""LoRA extraction, ours against mergekit-extract-lora 0.1.5: error and size per rank.

    .venv/bin/python benchmarks/extract_lora.py MODEL BASE [--ranks 8 32 128]
        [--mergekit .venv-mergekit/bin/mergekit-extract-lora] [--out benchmarks/output]

For each rank, both tools extract MODEL - BASE as a PEFT adapter; each adapter is then
scored the same way here, independently of either tool: over every linear layer the
adapter factors, the relative Frobenius error ||D - scale B A|| / ||D|| of the task
vector D = MODEL - BASE (fp64, from the stored weights), and the adapter file's bytes
(all of it, and its LoRA factors alone). Writes extract_lora.md and .csv into --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from otamerge.extract_lora import ExtractOptions, extract_lora
from otamerge.io.checkpoint import Checkpoint
from otamerge.io.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PREFIX

REPO = Path(__file__).resolve().parents[1]


def score(adapter: Path, model: Checkpoint, base: Checkpoint) -> dict:
    """Relative error of the adapter's linear layers against the task vector, and sizes."""
    weights = load_file(adapter / ADAPTER_WEIGHTS)
    cfg = json.loads((adapter / ADAPTER_CONFIG).read_text())
    err2 = norm2 = 0.0
    for key, a in weights.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len(PREFIX):-len(".lora_A.weight")]
        b = weights[f"{PREFIX}{module}.lora_B.weight"]
        r = cfg.get("rank_pattern", {}).get(module, cfg["r"])
        scale = cfg.get("alpha_pattern", {}).get(module, cfg["lora_alpha"]) / r
        d = model.get(f"{module}.weight").double() - base.get(f"{module}.weight").double()
        err2 += float((d - scale * (b.double() @ a.double())).square().sum())
        norm2 += float(d.square().sum())
    return {"relative_error": math.sqrt(err2 / norm2),
            "adapter_bytes": (adapter / ADAPTER_WEIGHTS).stat().st_size,
            "lora_bytes": sum(t.numel() * t.element_size() for k, t in weights.items() if ".lora_" in k),
            "tensors": len(weights)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("base", type=Path)
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--mergekit", default=str(REPO / ".venv-mergekit/bin/mergekit-extract-lora"))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/output")
    args = ap.parse_args(argv)
    model, base = Checkpoint(args.model, "model"), Checkpoint(args.base, "base")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rank in args.ranks:
            ours, theirs = Path(tmp) / f"ours{rank}", Path(tmp) / f"mergekit{rank}"
            start = time.perf_counter()
            extract_lora(args.model, args.base, ours, ExtractOptions(rank=rank, progress=False, device="cpu"))
            rows.append({"rank": rank, "tool": "otamerge", "seconds": time.perf_counter() - start,
                         **score(ours, model, base)})
            start = time.perf_counter()
            subprocess.run([args.mergekit, "--model", str(args.model), "--base-model", str(args.base),
                            "--out-path", str(theirs), "--max-rank", str(rank), "--quiet"], check=True,
                           capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            rows.append({"rank": rank, "tool": "mergekit-extract-lora 0.1.5", "seconds": time.perf_counter() - start,
                         **score(theirs, model, base)})
            for r in rows[-2:]:
                print(json.dumps(r), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "extract_lora.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [f"{args.model} over {args.base}", "",
             "| rank | tool | relative error of the linear layers | adapter MB | LoRA factors MB | seconds |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['rank']} | {r['tool']} | {r['relative_error']:.4f} | {r['adapter_bytes'] / 1e6:.1f} | "
              f"{r['lora_bytes'] / 1e6:.1f} | {r['seconds']:.1f} |" for r in rows]
    (args.out / "extract_lora.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
