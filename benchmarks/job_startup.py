"""What a workflow job pays before and after its work: Snakemake's script preamble, the
imports of the rule's script, and the end of the process.

    python benchmarks/job_startup.py [--repo .] [--repeats 7] [--out benchmarks/output]

For each script in workflow/scripts/ it runs, as its own process and with one thread,
the lines of the script before its first ``with`` block (its imports) after the imports
Snakemake's ``script:`` preamble does, then ends the process as the script does: through
``otamerge.logs.job`` (``os._exit`` once the job succeeded) when the script uses it, else
by a normal interpreter exit. Nothing else, so the wall time is the job's start-up
overhead. It also times a bare ``python -c pass``, ``import torch``, and a whole
``otamerge merge`` (linear) of a tiny family (2 layers, hidden 64): the merge command's
start-up, whose target is at most 0.3 s more than ``import torch``. ``--repo`` points
at a checkout (its ``src`` goes first on PYTHONPATH), so two checkouts compare before and
after. Writes job_startup_<checkout folder>.csv (every run) and prints medians.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import write_family  # noqa: E402

# what Snakemake's preamble imports to unpickle the `snakemake` object of a script job
PREAMBLE = "import pickle, snakemake.iocontainers, snakemake.logging, snakemake.shell\n"
FAST_EXIT = "import os, sys\nsys.stdout.flush()\nsys.stderr.flush()\nos._exit(0)\n"


def script_startup(script: Path) -> str:
    """The script's lines before its first ``with`` block, and its way of ending."""
    head = []
    for line in script.read_text().splitlines():
        if line.startswith("with "):
            break
        head.append(line)
    fast = "from otamerge.logs import job" in script.read_text()
    return PREAMBLE + "\n".join(head) + "\n" + (FAST_EXIT if fast else "")


def tiny_merge(work: Path) -> list[str]:
    """``otamerge merge`` of a linear merge of a tiny family (each run replaces the last output)."""
    fam = write_family(work / "fam", n_experts=2, layers=2, hidden=64, intermediate=128, vocab=256, moments=False)
    cfg = {"merge_method": "linear", "dtype": "bfloat16",
           "models": [{"model": str(fam[e]), "parameters": {"weight": 0.5}} for e in ("expert0", "expert1")]}
    (work / "linear.yml").write_text(yaml.safe_dump(cfg))
    return ["-m", "otamerge.cli", "merge", "--quiet", str(work / "linear.yml"), str(work / "out")]


def timed(args: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "output"))
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    env = {**os.environ, "PYTHONPATH": str(repo / "src"), "OMP_NUM_THREADS": "1"}
    work = Path(tempfile.mkdtemp(prefix="job_startup-"))
    cases = {"python -c pass": ["-c", "pass"], "import torch": ["-c", "import torch"],
             "otamerge merge (tiny)": tiny_merge(work)}
    cases |= {s.stem: ["-c", script_startup(s)] for s in sorted((repo / "workflow/scripts").glob("*.py"))}
    runs = []
    for rep in range(args.repeats):  # interleaved, so a busy moment spreads over every case
        for name, cmd in cases.items():
            runs.append({"repo": str(repo), "case": name, "repeat": rep, "wall_s": timed(cmd, env)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"job_startup_{repo.name}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(runs[0]))
        writer.writeheader()
        writer.writerows(runs)
    med = {name: statistics.median(r["wall_s"] for r in runs if r["case"] == name) for name in cases}
    print(f"{repo}: median of {args.repeats} (s)")
    for name, s in med.items():
        print(f"{name:24s} {s:6.2f}")
    print(f"tiny merge - import torch: {med['otamerge merge (tiny)'] - med['import torch']:+.2f} s (target <= 0.3)")


if __name__ == "__main__":
    main()
