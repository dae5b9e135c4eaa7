"""Adam bias correction (exp_avg_sq / (1 - beta2^t)) on the demo's curvature merges.

    python benchmarks/bias_correction.py [--seed 0] [--config config/config.yaml]

Needs a finished `make demo` (results/seed<N>/merges/<merge>/merge_config.yml and the
models). Each curvature merge is redone three ways and scored by the builtin evaluator:
raw moments (as the workflow merged it), moments corrected with each expert's own step
count (the demo's experts all train 300 steps), and moments corrected as if the experts had
the step counts of the paper's checkpoints (234 to 2611 steps), the case where correction
changes the experts' relative weights. FFG thresholds are divided by the same factor, so
every mask stays as it was. Prints retention (exact match, token accuracy) per merge and way.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from otamerge.workflow import layout
from otamerge.evaluation.builtin import evaluate, load_model
from otamerge.merge import MergeOptions, merge_file
from otamerge.curvature.moments import Moments, correct_bias
from otamerge.report.retention import gain_ratio

MERGES = ["ota_ffg", "ota", "fisher", "ota_ffg_linear"]
# steps of the paper's checkpoints (math 2611, coding 1111, precise_if 234, general 912,
# knowledge 820), assigned to the demo's experts in config order
PAPER_STEPS = [2611, 1111, 234, 912, 820]


def _corrected_config(raw: dict, out: Path, steps: dict[str, int | None]) -> dict:
    cfg = yaml.safe_load(yaml.safe_dump(raw))
    for entry in cfg["models"]:
        name = Path(entry["model"]).name
        p = entry["parameters"]
        dst = out / f"{name}-{steps[name]}.safetensors"
        applied = correct_bias(Moments(p["preconditioner_path"], name), dst, step=steps[name], progress=False)
        p["preconditioner_path"] = str(dst)
        if p.get("precond_threshold") is not None:
            p["precond_threshold"] = p["precond_threshold"] / applied["factor"]
    return cfg


def _scores(model_dir: Path, tasks: list[str], n: int, seed: int) -> dict[tuple[str, str], float]:
    model, tok = load_model(model_dir)
    return {(r["task"], r["metric"]): r["score"] for r in evaluate(model, tok, tasks, n, seed, "m")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="config/config.yaml")
    args = ap.parse_args()
    cfg = yaml.safe_load(open(args.config))
    experts = list(cfg["demo"]["experts"])
    tasks = {e: cfg["demo"]["experts"][e]["task"] for e in experts}
    n = cfg["demo"].get("n_eval", 100)
    score = lambda folder: _scores(folder, list(tasks.values()), n, args.seed)  # noqa: E731
    base = score(Path(layout.downloaded_model(args.seed, "base")))
    own = {e: score(Path(layout.downloaded_model(args.seed, e))) for e in experts}
    ways = {"raw": None, "own steps": {e: None for e in experts}, "paper's steps": dict(zip(experts, PAPER_STEPS))}
    print("| merge | moments | retention exact match | retention token accuracy |\n| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for merge in MERGES:
            raw = yaml.safe_load(open(layout.merge_config(args.seed, merge)))
            for way, steps in ways.items():
                folder = Path(layout.merged_model(args.seed, merge))
                if steps is not None:
                    out = Path(tmp) / merge / way.replace(" ", "_").replace("'", "")
                    out.mkdir(parents=True)
                    (out / "c.yml").write_text(yaml.safe_dump(_corrected_config(raw, out, steps)))
                    folder = merge_file(out / "c.yml", out / "model", MergeOptions(progress=False))
                merged = score(folder)
                cells = []
                for metric in ("exact_match", "token_accuracy"):
                    ratios = [gain_ratio(merged[(tasks[e], metric)], base[(tasks[e], metric)], own[e][(tasks[e], metric)])
                              for e in raw_experts(raw)]
                    cells.append(f"{sum(ratios) / len(ratios):.3f}")
                print(f"| {merge} | {way} | {cells[0]} | {cells[1]} |", flush=True)


def raw_experts(raw: dict) -> list[str]:
    return [Path(m["model"]).name for m in raw["models"]]


if __name__ == "__main__":
    main()
