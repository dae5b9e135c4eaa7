"""Peak RSS of an OTA+FFG merge of 3 experts and of a 5-density FFG sweep of one expert,
as the number of layers doubles.

    python benchmarks/memory.py [--layers 4 8 16] [--chunk-mb MiB] [--out benchmarks/output]

Each job runs in its own process; its peak RSS (VmHWM) is reported next to E, the bytes
of the largest input tensor (the embedding, bf16), and next to the RSS of a process
that only imports the engine. ``--chunk-mb`` defaults to the engine's own row chunk
(``io.checkpoint.CHUNK_BYTES``). Writes a CSV and a Markdown table.
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

from otamerge.io.checkpoint import CHUNK_BYTES  # noqa: E402

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent, so
# a child of a process that just generated a gigabyte of checkpoints would report that.
CHILD = """
import sys
from otamerge.ffg.graft import FfgOptions, ffg_sweep
from otamerge.merge import MergeOptions, merge_file
what, chunk = sys.argv[1], int(float(sys.argv[2]) * 2**20)
if what == "merge":
    merge_file(sys.argv[3], sys.argv[4], MergeOptions(chunk_bytes=chunk, progress=False))
elif what == "ffg":
    fam = sys.argv[3]
    ffg_sweep(fam + "/base", fam + "/expert0", fam + "/expert0/export/exp_avg_sq.safetensors",
              [0.01, 0.05, 0.1, 0.2, 0.4], "fisher", sys.argv[4], FfgOptions(chunk_bytes=chunk, progress=False))
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(int(hwm.split()[1]) * 1024)
"""


def child(*args: str) -> tuple[int, float]:
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True)
    return int(res.stdout.split()[-1]), round(time.perf_counter() - t, 2)


def measure(layers: int, chunk_mb: float, work: Path, hidden: int, vocab: int) -> dict:
    fam = write_family(work / f"L{layers}", n_experts=3, layers=layers, hidden=hidden,
                       intermediate=4 * hidden, vocab=vocab)
    cfg = {"merge_method": "ota", "base_model": str(fam["base"]), "dtype": "bfloat16",
           "parameters": {"epsilon": "1e-26", "fallback_to_base": True},
           "models": [{"model": str(fam[f"expert{i}"]),
                       "parameters": {"preconditioner_path": "export/exp_avg_sq.safetensors",
                                      "precond_threshold": 1e-14}} for i in range(3)]}
    (work / "c.yml").write_text(yaml.safe_dump(cfg))
    merge_rss, merge_s = child("merge", str(chunk_mb), str(work / "c.yml"), str(work / f"out{layers}"))
    ffg_rss, ffg_s = child("ffg", str(chunk_mb), str(work / f"L{layers}"), str(work / f"ffg{layers}"))
    idle_rss, _ = child("none", str(chunk_mb))
    shapes = llama_shapes(layers, hidden, 4 * hidden, vocab)
    largest = max(a * (b if len(s) > 1 else 1) for s in shapes.values() for a, b in [(s[0], s[-1])]) * 2
    params = sum(s[0] * (s[1] if len(s) > 1 else 1) for s in shapes.values())
    return {"layers": layers, "params": params, "largest_tensor_bytes": largest,
            "chunk_mb": chunk_mb, "import_rss_bytes": idle_rss, "merge_peak_rss_bytes": merge_rss,
            "merge_wall_s": merge_s, "ffg5_peak_rss_bytes": ffg_rss, "ffg5_wall_s": ffg_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--chunk-mb", type=float, default=CHUNK_BYTES / 2**20)
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
    with open(out / "memory.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    mib = 2**20
    lines = ["| layers | params/model | E (MiB) | chunk (MiB) | import-only RSS (MiB) | OTA merge peak RSS (MiB) "
             "| merge (s) | FFG 5 densities peak RSS (MiB) | FFG (s) |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['layers']} | {r['params']:,} | {r['largest_tensor_bytes'] / mib:.1f} | {r['chunk_mb']} | "
              f"{r['import_rss_bytes'] / mib:.0f} | {r['merge_peak_rss_bytes'] / mib:.0f} | {r['merge_wall_s']} | "
              f"{r['ffg5_peak_rss_bytes'] / mib:.0f} | {r['ffg5_wall_s']} |" for r in rows]
    (out / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
