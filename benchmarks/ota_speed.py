"""OTA+FFG merge speed: versions of our code against the paper's own code and `cat`.

    .venv/bin/python benchmarks/ota_speed.py [--layers 4 8 16] [--repeats 2] [--threads 2]
        [--ours LABEL=SRC_DIR ...] [--python PY] [--fork .venv-fork/bin/mergekit-yaml]
        [--hidden 1024 --intermediate 4096 --vocab 32000] [--out benchmarks/output]

For each size it writes a seeded synthetic Llama-shaped family (benchmarks/synthetic.py:
base + 3 experts, bf16 weights sharded in four like hub checkpoints, one fp32
``export/exp_avg_sq.safetensors`` per expert as the paper ships them), takes each expert's
FFG threshold at density 0.1 with ``otamerge ffg`` (once, untimed), and writes one OTA+FFG
YAML in the form of the paper's hf_ota_ffg_per_model_thresh.yml (epsilon 1e-26, power 0.5,
normalise none, fallback_to_base, no rescale, a per-model preconditioner_path and
precond_threshold; dtype bfloat16). Every case reads that same YAML, each as its own
process (wall; peak RSS: VmHWM our processes report, else ``/usr/bin/time``'s), with OMP_NUM_THREADS and torch's
threads at --threads, the inputs read once before every run (warm page cache), repeats
interleaved (A B C A B C ...):

- ``ours:LABEL``, one per ``--ours LABEL=SRC_DIR``: ``otamerge merge`` with
  PYTHONPATH=SRC_DIR (so two versions of our code run side by side; default: this
  checkout's src/ as ``ours:wt``), run by --python (default: this interpreter);
- ``fork``: the paper's code (pmahdavi/ota-merge, a mergekit 0.1.2 fork;
  ``make .venv-fork/.installed``) as ``mergekit-yaml``, CPU, --num-threads, the same
  output shard size;
- ``cat``: ``cat`` of exactly the input files (weights and moments), the floor;
- ``ffg:LABEL``, one per ``--ours``: ``otamerge ffg`` of expert0 at the --ffg densities (a
  sweep writing one graft per density), with the bytes it read (``rchar`` of
  /proc/self/io) over its input bytes: the passes it makes over its inputs.

Writes ota_speed.csv (every run) and ota_speed.md (best and median wall, ns per parameter
of one model for the 3 experts, peak RSS, ratios to the fork and to cat) into --out, and
prints the table. Then checks the last outputs of each size: whether every ours:* case
wrote byte-identical tensor files (sha256), and the largest difference between each of
ours and the fork (printed, not asserted: the fork decides "every expert masked" and
normalises its weights differently; src/otamerge/methods/ota.py lists how).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import llama_shapes, n_params, write_family  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXPERTS = [f"expert{i}" for i in range(3)]
DENSITY = 0.1
# the paper's OTA+FFG config (configs/hf_ota_ffg_per_model_thresh.yml of pmahdavi/ota-merge)
OTA_PARAMETERS = {"epsilon": 1e-26, "normalise": "none", "power": 0.5, "fallback_to_base": True,
                  "rescale": False}
# `python -c` so that the code under test comes from PYTHONPATH alone (no script path on
# sys.path); at exit it reports its peak RSS (VmHWM: a child's ru_maxrss would carry this
# benchmark's own over exec) and the bytes it read (rchar) on stderr
OURS_MAIN = ("import sys; from otamerge.cli import main; rc = main(); "
             "sys.stderr.write(open('/proc/self/status').read() + open('/proc/self/io').read()); sys.exit(rc)")


# ---------------------------------------------------------------- inputs


def family(args: argparse.Namespace, layers: int, root: Path) -> tuple[dict[str, Path], int]:
    """The seeded family of one size, and its parameters per model."""
    shapes = llama_shapes(layers, args.hidden, args.intermediate, args.vocab)
    params = n_params(shapes)
    start = time.perf_counter()
    fam = write_family(root, n_experts=len(EXPERTS), layers=layers, hidden=args.hidden,
                       intermediate=args.intermediate, vocab=args.vocab, seed=args.seed,
                       shard_bytes=params * 2 // 4 + 1)  # four bf16 shards, like hub checkpoints
    print(f"[{layers} layers, {size(params)} params] family written in {time.perf_counter() - start:.0f} s",
          flush=True)
    return fam, params


def size(params: int) -> str:
    return f"{params / 1e9:.3f}B" if params >= 1e7 else f"{params / 1e6:.3f}M"


def moments(fam: dict[str, Path]) -> dict[str, Path]:
    return {e: fam[e] / "export/exp_avg_sq.safetensors" for e in EXPERTS}


def input_files(fam: dict[str, Path]) -> list[Path]:
    """Every file a merge reads: the base's and experts' weight shards and the moments."""
    weights = [f for m in ["base", *EXPERTS] for f in sorted(fam[m].glob("*.safetensors"))]
    return weights + list(moments(fam).values())


def thresholds(fam: dict[str, Path], python: str, src: Path, env: dict, work: Path) -> dict[str, float]:
    """Each expert's FFG threshold at DENSITY, from ``otamerge ffg`` (its statistics.json)."""
    out = {}
    for e, mom in moments(fam).items():
        folder = work / "ffg" / e
        # the output folder first: --density takes every value after it
        res = subprocess.run([python, "-c", OURS_MAIN, "ffg", str(folder), "--quiet", "--device", "cpu",
                              "--base", str(fam["base"]), "--expert", str(fam[e]), "--moments", str(mom),
                              "--density", str(DENSITY)],
                             env={**env, "PYTHONPATH": str(src)}, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"otamerge ffg of {e} failed ({res.returncode}):\n{res.stderr[-3000:]}")
        (stats,) = folder.glob("*/statistics.json")  # one density: one folder
        out[e] = float(json.loads(stats.read_text())["threshold"])
        subprocess.run(["rm", "-rf", str(folder)], check=True)  # the graft itself is not needed
    return out


def merge_config(fam: dict[str, Path], thr: dict[str, float]) -> dict:
    """The OTA+FFG YAML every tool reads: the base apart (the fork adds it to the models
    itself), per-model moments file and threshold, as in the paper's per-model config."""
    return {"merge_method": "ota", "base_model": str(fam["base"]), "dtype": "bfloat16",
            "parameters": dict(OTA_PARAMETERS),
            "models": [{"model": str(fam[e]), "parameters": {"preconditioner_path": str(p),
                                                              "precond_threshold": thr[e]}}
                       for e, p in moments(fam).items()]}


# ---------------------------------------------------------------- cases


Case = tuple[list[str], dict, Path | None]  # command, extra environment, output folder (none: cat)


def cases(args: argparse.Namespace, fam: dict[str, Path], cfg: Path, inputs: list[Path],
          work: Path) -> dict[str, Case]:
    """Every case by name, in the order of each repeat."""
    plan = {}
    for label, src in args.ours:
        out = work / f"ours_{label}"
        plan[f"ours:{label}"] = ([args.python, "-c", OURS_MAIN, "merge", "--quiet", "--device", "cpu",
                                  "--out-shard-size", str(args.shard_gb), str(cfg), str(out)],
                                 {"PYTHONPATH": str(src)}, out)
    if args.fork:
        out = work / "fork"
        # mergekit counts output shards in parameters (bf16 out: 2 bytes each); the family has
        # no tokenizer to copy; lazy unpickling concerns .bin inputs only (ours are safetensors)
        plan["fork"] = ([args.fork, "--no-cuda", "--num-threads", str(args.threads), "--quiet",
                         "--no-lazy-unpickle", "--no-copy-tokenizer",
                         "--out-shard-size", str(int(args.shard_gb * 2**30 / 2)), str(cfg), str(out)], {}, out)
    plan["cat"] = (["cat", *map(str, inputs)], {}, None)
    for label, src in args.ours if args.ffg else []:
        out = work / f"ffg_{label}"
        plan[f"ffg:{label}"] = ([args.python, "-c", OURS_MAIN, "ffg", str(out), "--quiet", "--device", "cpu",
                                 "--base", str(fam["base"]), "--expert", str(fam[EXPERTS[0]]),
                                 "--moments", str(moments(fam)[EXPERTS[0]]), "--density", *args.ffg],
                                {"PYTHONPATH": str(src)}, out)
    return plan


def timed(cmd: list[str], env: dict, inputs: list[Path]) -> dict:
    """Wall seconds and peak RSS (MiB) of one process, its inputs read just before: the
    RSS our processes report, else /usr/bin/time's (where a machine has it)."""
    subprocess.run(["cat", *map(str, inputs)], stdout=subprocess.DEVNULL, check=True)  # warm page cache
    gnu_time = Path("/usr/bin/time").is_file()
    with tempfile.NamedTemporaryFile("r") as tm:
        start = time.perf_counter()
        res = subprocess.run(["/usr/bin/time", "-o", tm.name, "-f", "%e %M", *cmd] if gnu_time else cmd, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
        wall = time.perf_counter() - start
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:5])}... failed ({res.returncode}):\n{res.stderr[-3000:]}")
        rss_kb = int(tm.read().split()[-1]) if gnu_time else None
    reported = {line.split(":")[0]: int(line.split()[1]) for line in res.stderr.splitlines()
                if line.startswith(("VmHWM:", "rchar:"))}
    rss_kb = reported.get("VmHWM", rss_kb)
    return {"wall_s": wall, "peak_rss_mib": rss_kb / 1024 if rss_kb is not None else math.nan,
            "read_bytes": reported.get("rchar", "")}


def check_sources(args: argparse.Namespace, env: dict) -> None:
    """Each ours:* case must import otamerge from its own SRC_DIR, not an installed copy."""
    for label, src in args.ours:
        res = subprocess.run([args.python, "-c", "import otamerge; print(otamerge.__file__)"],
                             env={**env, "PYTHONPATH": str(src)}, capture_output=True, text=True, check=True)
        if not Path(res.stdout.strip()).resolve().is_relative_to(src.resolve()):
            sys.exit(f"ours:{label}: otamerge comes from {res.stdout.strip()}, not {src}")


# ---------------------------------------------------------------- output checks


def tensor_files(folder: Path) -> dict[str, Path]:
    return {str(f.relative_to(folder)): f for f in sorted(folder.rglob("*.safetensors"))}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def identical_outputs(folders: dict[str, Path]) -> str:
    """One line: whether every ours:* output holds the same tensor files, byte for byte."""
    digests = {label: {name: sha256(f) for name, f in tensor_files(folder).items()}
               for label, folder in folders.items()}
    first, *rest = digests
    if not rest:
        return f"one version of ours ({first}): nothing to compare"
    same = all(digests[label] == digests[first] for label in rest)
    files = len(digests[first])
    if same:
        return f"ours {', '.join(digests)}: byte-identical ({files} tensor files, sha256)"
    return "ours " + ", ".join(digests) + ": DIFFER (" + "; ".join(
        f"{label}: {sum(digests[label].get(n) != h for n, h in digests[first].items())} of {files} files differ"
        f" from {first}" for label in rest) + ")"


def tensors(folder: Path) -> dict[str, Path]:
    return {name: f for f in tensor_files(folder).values() for name in safe_open(str(f), "pt").keys()}


def bf16_ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in bf16 units in the last place at max(|a|, |b|) (8 significant bits)."""
    x, y = a.double(), b.double()
    big = torch.maximum(x.abs(), y.abs()).clamp_min(torch.finfo(torch.bfloat16).tiny)
    return (x - y).abs() / torch.exp2(torch.floor(torch.log2(big)) - 7)


def difference(ours: Path, fork: Path) -> str:
    """Largest |ours - fork| over every tensor, in value and in bf16 ulps, and the share of
    entries that differ at all."""
    ta, tb = tensors(ours), tensors(fork)
    if set(ta) != set(tb):
        only_ours, only_fork = sorted(set(ta) - set(tb))[:5], sorted(set(tb) - set(ta))[:5]
        return f"different tensors: only in ours {only_ours}, only in the fork's {only_fork}"
    worst_abs, worst_ulps, differ, total = 0.0, 0.0, 0, 0
    for name in ta:
        with safe_open(str(ta[name]), "pt") as fa, safe_open(str(tb[name]), "pt") as fb:
            a, b = fa.get_tensor(name), fb.get_tensor(name)
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{name}: ours {a.dtype} {tuple(a.shape)}, fork {b.dtype} {tuple(b.shape)}"
        worst_abs = max(worst_abs, float((a.double() - b.double()).abs().max()))
        worst_ulps = max(worst_ulps, float(bf16_ulps(a, b).max()))
        differ, total = differ + int((a != b).sum()), total + a.numel()
    return (f"max |diff| {worst_abs:.3g}, max {worst_ulps:g} bf16 ulps, {differ} of {total} entries differ "
            f"({100 * differ / total:.4f}%), {len(ta)} tensors")


def check_outputs(plan: dict, params: int, layers: int) -> list[str]:
    ours = {name.split(":", 1)[1]: out for name, (_, _, out) in plan.items() if name.startswith("ours:")}
    lines = [f"{layers} layers ({size(params)}): {identical_outputs(ours)}"]
    grafts = {name.split(":", 1)[1]: out for name, (_, _, out) in plan.items() if name.startswith("ffg:")}
    if grafts:  # none with --no-ffg
        lines.append(f"{layers} layers ({size(params)}), FFG sweep: {identical_outputs(grafts)}")
    if "fork" in plan:
        for label, folder in ours.items():
            lines.append(f"{layers} layers ({size(params)}): ours:{label} vs fork: "
                         f"{difference(folder, plan['fork'][2])}")
    return lines


# ---------------------------------------------------------------- runs and report


def run_size(args: argparse.Namespace, layers: int, work: Path, writer, rows: list[dict]) -> list[str]:
    """Every case of one size, interleaved; returns the output checks' lines."""
    fam, params = family(args, layers, work / "family")
    inputs = input_files(fam)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env.pop("PYTHONPATH", None)
    thr = thresholds(fam, args.python, args.ours[0][1], env, work)
    print(f"  FFG thresholds at density {DENSITY} (ours:{args.ours[0][0]}): "
          + ", ".join(f"{e} {t:.6g}" for e, t in thr.items()), flush=True)
    cfg = work / "ota_ffg.yml"
    cfg.write_text(yaml.safe_dump(merge_config(fam, thr), sort_keys=False))
    plan = cases(args, fam, cfg, inputs, work)
    input_bytes = sum(f.stat().st_size for f in inputs)
    # the sweep reads the base, expert0 and its moments
    ffg_bytes = sum(f.stat().st_size for m in ("base", EXPERTS[0]) for f in fam[m].glob("*.safetensors")) \
        + moments(fam)[EXPERTS[0]].stat().st_size
    for rep in range(args.repeats):
        for name, (cmd, extra, out) in plan.items():
            if out is not None:  # each run writes afresh
                subprocess.run(["rm", "-rf", str(out)], check=True)
            r = timed(cmd, {**env, **extra}, inputs)
            row = {"layers": layers, "hidden": args.hidden, "intermediate": args.intermediate, "vocab": args.vocab,
                   "params": params, "case": name, "repeat": rep, "threads": args.threads,
                   "input_bytes": ffg_bytes if name.startswith("ffg:") else input_bytes, **r}
            writer.writerow(row)
            rows.append(row)
            print(f"  {name:16s} rep {rep}: {r['wall_s']:7.2f} s {r['peak_rss_mib']:8.0f} MiB", flush=True)
    checks = check_outputs(plan, params, layers)
    for line in checks:
        print("  " + line, flush=True)
    subprocess.run(["rm", "-rf", str(work / "family"), *(str(o) for _, _, o in plan.values() if o)], check=True)
    return checks


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"  # (a tiny family's `cat` takes 0.00 s)


def report(rows: list[dict], args: argparse.Namespace, checks: list[str]) -> str:
    fork_commit = Path(args.fork).resolve().parents[1] / "src/COMMIT" if args.fork else None
    out = [f"OTA+FFG (density {DENSITY} thresholds), bf16, warm page cache; threads: {args.threads}; "
           f"repeats: {args.repeats} (interleaved); {os.cpu_count()} CPUs; torch {torch.__version__}; fork "
           + (fork_commit.read_text().strip()[:12] if fork_commit and fork_commit.is_file() else str(args.fork or "-"))
           + ". ns/param: median wall / parameters of one model (3 experts merged); ratios of medians.", "",
           "| size | case | wall best (s) | wall median (s) | ns/param | peak RSS (MiB) | / fork | / cat |",
           "|---|---|---|---|---|---|---|---|"]
    for layers in dict.fromkeys(r["layers"] for r in rows):
        mine = [r for r in rows if r["layers"] == layers]
        params = mine[0]["params"]
        walls = {c: [r["wall_s"] for r in mine if r["case"] == c] for c in dict.fromkeys(r["case"] for r in mine)}
        med = {c: statistics.median(w) for c, w in walls.items()}
        for case, w in walls.items():
            if case.startswith("ffg:"):
                continue
            rss = statistics.median(r["peak_rss_mib"] for r in mine if r["case"] == case)
            out.append(f"| {layers} layers, {size(params)} | {case} | {min(w):.2f} | {med[case]:.2f} | "
                       f"{med[case] / params * 1e9:.1f} | {rss:.0f} | "
                       f"{ratio(med[case], med['fork']) if 'fork' in med else '-'} | {ratio(med[case], med['cat'])} |")
    ffg = [r for r in rows if r["case"].startswith("ffg:")]
    if ffg:
        out += ["", f"FFG sweep of expert0 at densities {' '.join(args.ffg)} (fisher metric); passes: bytes read "
                "over the base's, the expert's and its moments' bytes.", "",
                "| size | case | wall best (s) | wall median (s) | peak RSS (MiB) | passes over the inputs |",
                "|---|---|---|---|---|---|"]
        for layers in dict.fromkeys(r["layers"] for r in ffg):
            for case in dict.fromkeys(r["case"] for r in ffg):
                mine = [r for r in ffg if r["layers"] == layers and r["case"] == case]
                w = [r["wall_s"] for r in mine]
                passes = statistics.median(r["read_bytes"] / r["input_bytes"] for r in mine)
                out.append(f"| {layers} layers, {size(mine[0]['params'])} | {case} | {min(w):.2f} | "
                           f"{statistics.median(w):.2f} | "
                           f"{statistics.median(r['peak_rss_mib'] for r in mine):.0f} | {passes:.2f} |")
    out += ["", "Outputs (last repeat of each case):", "", *(f"- {line}" for line in checks)]
    return "\n".join(out) + "\n"


def parse_ours(text: str) -> tuple[str, Path]:
    label, sep, src = text.partition("=")
    if not sep or not label or not (Path(src) / "otamerge").is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=SRC_DIR, SRC_DIR holding otamerge/")
    return label, Path(src).resolve()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ours", type=parse_ours, action="append", metavar="LABEL=SRC_DIR",
                    help="a version of our code (repeatable; default: wt=<this checkout>/src); the first one "
                         "also computes the FFG thresholds")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the ours:* cases (torch and our "
                    "dependencies installed)")
    ap.add_argument("--fork", default=str(REPO / ".venv-fork/bin/mergekit-yaml"),
                    help="the paper's mergekit-yaml (make .venv-fork/.installed; empty: skip the fork)")
    ap.add_argument("--shard-gb", type=float, default=0.5, help="output shard size of every tool")
    ap.add_argument("--ffg", nargs="+", default=["0.01", "0.02", "0.05", "0.1", "0.2"],
                    help="densities of the FFG sweep cases")
    ap.add_argument("--no-ffg", action="store_true", help="no FFG sweep cases")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/output"))
    args = ap.parse_args(argv)
    args.ours = args.ours or [parse_ours(f"wt={REPO / 'src'}")]
    if args.no_ffg:
        args.ffg = []
    if len({label for label, _ in args.ours}) != len(args.ours):
        sys.exit("--ours: every LABEL must be different")
    if args.fork and not Path(args.fork).is_file():
        sys.exit(f"mergekit-yaml of the fork not found at {args.fork} (make .venv-fork/.installed, or --fork '')")
    check_sources(args, {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    checks: list[str] = []
    fields = ["layers", "hidden", "intermediate", "vocab", "params", "case", "repeat", "threads", "input_bytes",
              "wall_s", "peak_rss_mib", "read_bytes"]
    with tempfile.TemporaryDirectory(dir=args.work) as tmp, open(out / "ota_speed.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for layers in args.layers:
            checks += run_size(args, layers, Path(tmp), writer, rows)
            fh.flush()
    md = report(rows, args, checks)
    (out / "ota_speed.md").write_text(md)
    print("\n" + md)
    print(json.dumps({"csv": str(out / "ota_speed.csv"), "md": str(out / "ota_speed.md")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
