"""Peak RSS of an OTA+FFG merge of 3 experts as the number of layers doubles.

    python benchmarks/merge_memory.py [--layers 4 8] [--chunk-mb 16] [--out benchmarks/output]

Each merge runs in its own process; its peak RSS (VmHWM) is reported next to E, the
bytes of the largest input tensor (the embedding, bf16), so that the bound
"(experts + 3) x E + chunk" can be checked. Writes a CSV and a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import llama_shapes, write_family  # noqa: E402

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent, so
# a child of a process that just generated a gigabyte of checkpoints would report that.
CHILD = """
import sys
from otamerge.merge import MergeOptions, merge_file
merge_file(sys.argv[1], sys.argv[2], MergeOptions(chunk_bytes=int(float(sys.argv[3]) * 2**20), progress=False))
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(int(hwm.split()[1]) * 1024)
"""


def measure(layers: int, chunk_mb: float, work: Path, hidden: int, vocab: int) -> dict:
    fam = write_family(work / f"L{layers}", n_experts=3, layers=layers, hidden=hidden,
                       intermediate=4 * hidden, vocab=vocab)
    cfg = {"merge_method": "ota", "base_model": str(fam["base"]), "dtype": "bfloat16",
           "parameters": {"epsilon": "1e-26", "fallback_to_base": True},
           "models": [{"model": str(fam[f"expert{i}"]),
                       "parameters": {"preconditioner_path": "export/exp_avg_sq.safetensors",
                                      "precond_threshold": 1e-14}} for i in range(3)]}
    (work / "c.yml").write_text(yaml.safe_dump(cfg))
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", CHILD, str(work / "c.yml"), str(work / f"out{layers}"),
                          str(chunk_mb)], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    shapes = llama_shapes(layers, hidden, 4 * hidden, vocab)
    largest = max(a * (b if len(s) > 1 else 1) for s in shapes.values() for a, b in [(s[0], s[-1])]) * 2
    params = sum(s[0] * (s[1] if len(s) > 1 else 1) for s in shapes.values())
    return {"layers": layers, "params": params, "largest_tensor_bytes": largest,
            "chunk_mb": chunk_mb, "peak_rss_bytes": int(res.stdout.split()[-1]), "wall_s": round(wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--chunk-mb", type=float, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--out", default="benchmarks/output")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layers in args.layers:
            rows.append(measure(layers, args.chunk_mb, Path(tmp), args.hidden, args.vocab))
            print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "merge_memory.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["| layers | params | E (MiB) | chunk (MiB) | peak RSS (MiB) | wall (s) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['layers']} | {r['params']:,} | {r['largest_tensor_bytes'] / 2**20:.1f} | {r['chunk_mb']} | "
              f"{r['peak_rss_bytes'] / 2**20:.0f} | {r['wall_s']} |" for r in rows]
    (out / "merge_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
