import base64
import copy
import hashlib
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from otamerge.checkpoint import Checkpoint

from conftest import REPO, build_tiny, default_config, tiny_config
from workflow_utils import job_counts, most_threads_at_once, rule_resources, snakemake

SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")


def test_dry_run_lists_the_demo_rules(tmp_path):
    res = snakemake(tmp_path, "--profile", str(REPO / "profiles/local"), "-j1", "-n",
                    config=default_config())
    assert res.returncode == 0, res.stderr
    # experts x (fisher, magnitude, sparsegpt, and fisher_rank1 for ota_ffg_rank1) x densities
    n_merges, n_points = 11, 5 * 4 * 4
    assert job_counts(res.stdout + res.stderr) == {
        "demo_base": 1, "demo_expert": 5, "demo_texts": 1, "download": 6, "compress_moments": 5,
        "hessians": 1, "sparsegpt_importance": 1, "ffg": n_points, "merge_config": n_merges,
        "merge": n_merges, "evaluate_builtin": 6 + n_points + n_merges, "summary": 1, "sweep_summary": 1,
        "plots": 1, "all": 1,
        # lm_eval and perplexity score the main table's models; the builtin evaluator also the sweep
        "evaluate_lm_eval": 6 + n_merges, "evaluate_perplexity": 6 + n_merges}


def test_papers_config_validates_and_lists_the_whole_dag(tmp_path):
    cfg = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    validate(cfg, SCHEMA)
    res = snakemake(tmp_path, "-n", config=cfg)
    assert res.returncode == 0, res.stderr[-2000:]
    experts = 6  # all six are swept; the merges use five of them
    # OLMES scores the base, the experts, the merges and the five merged experts grafted at
    # their fixed density (FFG from full and from rank-1 moments)
    assert job_counts(res.stdout + res.stderr) == {
        "download": 1 + experts, "compress_moments": 5, "ffg": experts * 2 * 5 + 5, "merge_config": 9,
        "merge": 9, "evaluate_olmes": 1 + experts + 9 + 5 * 2, "summary": 1, "all": 1}
    assert "output: results/models/coding_tulu3" in res.stdout and "demo_base" not in res.stdout
    # 8.03B parameters: sizes scale with the model, and GPU rules ask for a GPU
    assert rule_resources(res.stdout, "merge") == {"gpu": "1", "mem_mb": "24075", "runtime": "91"}
    assert rule_resources(res.stdout, "ffg") == {"gpu": "1", "mem_mb": "10030", "runtime": "51"}
    assert rule_resources(res.stdout, "download") == {"mem_mb": "1000", "runtime": "91"}


def test_an_expert_without_moments_is_refused_only_where_they_are_read(tmp_path):
    cfg = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    expert = next(iter(cfg["models"]["experts"]))
    del cfg["models"]["experts"][expert]["preconditioner"]  # e.g. a LoRA adapter from the hub
    res = snakemake(tmp_path, "-n", config=cfg)
    assert res.returncode != 0
    assert f"experts {expert} have no preconditioner, which the fisher FFG metric" in res.stdout + res.stderr
    cfg["ffg"]["metrics"] = ["magnitude"]
    cfg["merges"] = {"ties": {"method": "ties", "model_parameters": {"weight": 1.0, "density": 0.3}}}
    res = snakemake(tmp_path, "-n", config=cfg)
    assert res.returncode == 0, res.stderr[-2000:]


def test_demo_jobs_ask_for_no_gpu_and_small_memory(tmp_path):
    res = snakemake(tmp_path, "-n", config=default_config())
    assert res.returncode == 0, res.stderr[-2000:]
    assert rule_resources(res.stdout, "merge") == {"gpu": "0", "mem_mb": "4001", "runtime": "11"}
    assert rule_resources(res.stdout, "demo_base") == {"mem_mb": "2000", "runtime": "30"}


def test_a_task_needing_an_api_key_stops_before_any_job(tmp_path):
    cfg = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    cfg["evaluation"]["tasks"].append("alpaca_eval_v2::tulu")
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    res = snakemake(tmp_path, "-n", config=cfg, env=env)
    assert res.returncode != 0
    assert "evaluation task alpaca_eval_v2::tulu needs the environment variable OPENAI_API_KEY" in res.stdout + res.stderr
    assert snakemake(tmp_path, "-n", config=cfg, env={**env, "OPENAI_API_KEY": "x"}).returncode == 0


def test_lint_is_clean():
    res = snakemake(REPO, "--lint")
    assert res.returncode == 0 and "Lints for" not in res.stdout + res.stderr, res.stdout


@pytest.mark.parametrize("change,message", [
    (lambda c: c.update(seed=-1), "-1 is less than the minimum of 0"),
    (lambda c: c.pop("evaluation"), "'evaluation' is a required property"),
    (lambda c: c["demo"]["experts"]["add"].update(task="sum"), "'sum' is not one of"),
    (lambda c: c["demo"]["base"].update(stpes=3), "'stpes' was unexpected"),
])
def test_schema_rejects_bad_values_naming_the_key(change, message):
    cfg = default_config()
    change(cfg)
    with pytest.raises(WorkflowError, match=message):
        validate(cfg, SCHEMA)
    validate(default_config(), SCHEMA)


def test_invalid_config_stops_before_any_job(tmp_path):
    cfg = default_config()
    cfg["seed"] = -1
    res = snakemake(tmp_path, "-j1", config=cfg)
    assert res.returncode != 0
    assert "seed" in res.stderr and "-1 is less than the minimum of 0" in res.stderr
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize("bad", ["add;touch PWNED", "$(touch PWNED)", "a b", "x'y", "../up"])
def test_names_that_could_reach_a_shell_or_escape_a_folder_are_refused(tmp_path, bad):
    """Expert names become wildcards, paths and job names in PBS/SLURM submissions: the
    schema admits only letters, digits and _ . - so no value can carry a metacharacter."""
    cfg = default_config()
    cfg["demo"]["experts"][bad] = cfg["demo"]["experts"].pop("add")
    res = snakemake(tmp_path, "-n", config=cfg)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "does not match '^[A-Za-z0-9][A-Za-z0-9_.-]*$'" in out, out[-2000:]
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "resources").exists()


def _digests(root: Path, pattern: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob(pattern)) if p.is_file()}


def _parallel_run_writes_the_same_bytes_and_only_declared_files(tmp_path: Path, cfg: dict) -> None:
    """The same workflow from scratch at -j4, scored by the builtin evaluator only (the
    external backends' jobs write no model): every model file (demo, grafts, merges) has
    the sha256 of the first run's (made at --cores 2) and every builtin score is equal; and
    every file it wrote belongs to the declared outputs or logs of exactly one job, so
    parallel jobs cannot write the same file."""
    first, again = tmp_path / "wf", tmp_path / "wf_j4"
    cfg = {**cfg, "evaluation": {**cfg["evaluation"], "backends": ["builtin"]}}
    run = snakemake(again, "-j4", config=cfg)
    assert run.returncode == 0, run.stderr[-3000:]
    for pattern in ("*.safetensors", "statistics.json"):
        assert _digests(again, pattern) == _digests(first, pattern) != {}
    builtin = [line for line in (first / "results/summary/scores.csv").read_text().splitlines()
               if not line.endswith((",lm_eval", ",perplexity"))]
    assert (again / "results/summary/scores.csv").read_text().splitlines() == builtin
    summary = snakemake(again, "--summary", config=cfg).stdout.splitlines()
    head = summary.index(next(line for line in summary if line.startswith("output_file")))
    columns = summary[head].split("\t")
    rows = [dict(zip(columns, line.split("\t"))) for line in summary[head + 1:] if line.strip()]
    outputs = [r["output_file"] for r in rows]
    # one writer each: an output is listed once; a log once per output of the one job it
    # belongs to (Snakemake requires a log to carry all of its job's wildcards)
    log_rules: dict[str, set[str]] = {}
    for r in rows:
        for f in r.get("log-file(s)", "").split(","):
            if f and f != "-":
                log_rules.setdefault(f, set()).add(r["rule"])
    assert len(outputs) == len(set(outputs)) and all(len(v) == 1 for v in log_rules.values())
    logs = list(log_rules)
    declared = [again / f for f in outputs + logs]
    written = [p for d in ("resources", "results", "logs") for p in (again / d).rglob("*") if p.is_file()]
    rules = {r["rule"] for r in rows}

    def benchmark(rel: Path) -> bool:  # results/benchmarks/<rule>/<its wildcards>.tsv, one per job
        return rel.parts[:2] == ("results", "benchmarks") and rel.parts[2] in rules and rel.suffix == ".tsv"

    stray = [str(p.relative_to(again)) for p in written
             if not any(p == d or d in p.parents for d in declared) and not benchmark(p.relative_to(again))]
    assert len(written) > len(outputs) and stray == []


@pytest.mark.long
def test_tiny_workflow_runs_and_reruns_only_the_changed_expert(tmp_path):
    cfg = tiny_config()
    cfg["demo"]["threads"] = 1
    cfg["evaluation"]["backends"] = ["builtin", "lm_eval", "perplexity"]
    cfg["ffg"]["metrics"] = ["fisher", "sparsegpt"]
    cfg["sparsegpt"]["samples"] = 8
    cfg["merges"]["ties_sparsegpt"] = default_config()["merges"]["ties_sparsegpt"]
    run = snakemake(tmp_path / "wf", "--cores", "2", config=cfg)
    assert run.returncode == 0, run.stderr[-3000:]
    scores = pd.read_csv(tmp_path / "wf/results/summary/scores.csv")
    chosen = pd.read_csv(tmp_path / "wf/results/summary/thresholds.csv")
    assert list(chosen.expert) == ["add", "rev"] and set(chosen.density) <= {0.1, 0.5, 1.0}
    grafts = [f"ffg/{r.expert}/fisher/{r.density:g}" for r in chosen.itertuples()]
    # rows like the paper's main table: base, experts, grafted experts, merges; x tasks x metrics
    merges = ["merge/ota_ffg", "merge/ties", "merge/ties_sparsegpt"]
    assert list(dict.fromkeys(scores.model)) == ["base", "add", "rev", *grafts, *merges]
    # builtin: 8 models x 5 tasks x 2 metrics; lm_eval: exact match of all but the grafts
    # (their density is chosen automatically, known only after the builtin sweep);
    # perplexity: the held-out text, every model but the grafts
    assert len(scores) == 8 * 5 * 2 + 6 * 5 * 1 + 6
    ppl = scores[scores.backend == "perplexity"]
    heldout = (tmp_path / "wf/resources/demo/text/heldout.txt").read_text()
    assert set(ppl.task) == {"heldout"} and (ppl.n == len(heldout)).all() and (ppl.score > 1).all()
    # the sparsegpt sweep and trim: one Hessian job for every expert and density
    stats = json.loads((tmp_path / "wf/results/ffg/rev/sparsegpt/0.1/statistics.json").read_text())
    assert stats["metric"] == "sparsegpt" and "model.embed_tokens.weight" in stats["fallback_magnitude"]
    trimmed = yaml.safe_load((tmp_path / "wf/results/merges/ties_sparsegpt/merge_config.yml").read_text())
    assert {m["parameters"]["preconditioner_path"] for m in trimmed["models"]} == {
        "results/importance/sparsegpt.safetensors"}
    assert len(list((tmp_path / "wf/results/benchmarks/hessians").iterdir())) == 1
    for (backend, model), rows in scores.groupby(["backend", "model"]):  # the evaluations' own numbers
        src = yaml.safe_load((tmp_path / f"wf/results/evaluation/{backend}/{model}.json").read_text())
        assert sorted(zip(rows.task, rows.metric, rows.score)) == sorted(
            (r["task"], r["metric"], pytest.approx(r["score"], rel=1e-5)) for r in src)
    exact = scores[scores.metric == "exact_match"].pivot_table(index=["model", "task"], columns="backend",
                                                               values="score").dropna()
    assert len(exact) == 30 and (exact.builtin == exact.lm_eval).all()
    assert "## exact_match (lm_eval)" in (tmp_path / "wf/results/summary/accuracy.md").read_text()
    merged = yaml.safe_load((tmp_path / "wf/results/merges/ota_ffg/merge_config.yml").read_text())
    assert [m["parameters"]["precond_threshold"] for m in merged["models"]] == list(chosen.threshold)
    assert (tmp_path / "wf/logs/demo_expert/rev.log").stat().st_size > 0
    # the workflow's jobs (separate processes) give the same bytes as an in-process build
    ref = build_tiny(tmp_path / "ref", cfg)
    for f in ["base/model.safetensors", "experts/rev/export/exp_avg_sq.safetensors"]:
        assert (tmp_path / "wf/resources/demo" / f).read_bytes() == (ref / f).read_bytes(), f

    _parallel_run_writes_the_same_bytes_and_only_declared_files(tmp_path, cfg)

    same = snakemake(tmp_path / "wf", "-n", config=cfg)
    assert "Nothing to be done" in same.stdout + same.stderr
    # the report holds the summary tables, byte for byte, with their captions
    rep = snakemake(tmp_path / "wf", "--report", "report.html", config=cfg)
    assert rep.returncode == 0, rep.stderr[-2000:]
    html = (tmp_path / "wf/report.html").read_text()
    for name in ("summary/accuracy.md", "summary/sweep.md", "summary/thresholds.csv", "plots/ffg_sweep.png",
                 "plots/methods.png", "plots/localization.png", "plots/mask_rank.png",
                 "plots/curvature_overlap.png"):
        data = re.search(rf"filename={re.escape(name.split('/')[1])};base64,([A-Za-z0-9+/=]+)", html)[1]
        assert base64.b64decode(data) == (tmp_path / "wf/results" / name).read_bytes(), name
    assert (tmp_path / "wf/results/plots/methods.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "greedy generation up to EOS equals the answer" in html
    denser = copy.deepcopy(cfg)
    denser["ffg"]["densities"] = [0.10, 0.5, 0.3]  # 0.10 is the existing 0.1 point
    added = snakemake(tmp_path / "wf", "-n", config=denser)
    # the new point for each expert, its evaluation, and the aggregation downstream
    assert job_counts(added.stdout + added.stderr) == {
        "ffg": 2 * 2, "evaluate_builtin": 2 * 2 + 1, "evaluate_lm_eval": 1, "evaluate_perplexity": 1, "merge_config": 1,
        "merge": 1, "summary": 1, "sweep_summary": 1, "plots": 1, "all": 1}
    outputs = [line for line in added.stdout.splitlines() if line.strip().startswith("output:")]
    assert any(o.strip() == "output: results/ffg/add/fisher/0.3" for o in outputs)
    assert not any("results/ffg/add/fisher/0.1" in o for o in outputs)

    _failed_merge_leaves_no_partial_output(tmp_path / "wf", cfg)

    cfg["demo"]["experts"]["rev"]["steps"] = 7
    changed = snakemake(tmp_path / "wf", "-n", config=cfg)
    counts = job_counts(changed.stdout + changed.stderr)
    # rev's four sweep points (2 metrics x 2 densities), not add's; the base's Hessians stay
    assert counts["demo_expert"] == 1 and counts["ffg"] == 4 and "hessians" not in counts
    outputs = [line for line in changed.stdout.splitlines() if line.strip().startswith("output:")]
    assert any("resources/demo/experts/rev" in o for o in outputs)
    assert not any("experts/add" in o or "ffg/add/" in o or "builtin/add.json" in o for o in outputs)


def _failed_merge_leaves_no_partial_output(wf, cfg):
    """A merge that fails after writing most of its tensors (NaN in the moments of the last
    tensor it reads) leaves no model folder, no temporary folder and no incomplete marker;
    with the moments mended the same command succeeds."""
    moments = wf / "results/models/add/preconditioner.safetensors"
    good, stamp = moments.read_bytes(), moments.stat()
    order = list(Checkpoint(wf / "results/models/base").names())
    v = load_file(moments)
    v[order[-1]] = torch.full_like(v[order[-1]], float("nan"))
    save_file(v, moments)
    # the old time stamp: only the forced merge runs, not the jobs that read the moments
    os.utime(moments, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    merge_dir = wf / "results/merges/ota_ffg"
    res = snakemake(wf, "-j1", "--forcerun", "merge", "results/merges/ota_ffg/model", config=cfg)
    assert res.returncode != 0
    log = (wf / "logs/merge/ota_ffg.log").read_text()
    assert f"moments tensor {order[-1]} in " in log and "has NaN or Inf values" in log
    assert sorted(p.name for p in merge_dir.iterdir()) == ["merge_config.yml", "thresholds.csv"]
    assert not any((wf / ".snakemake/incomplete").iterdir())
    moments.write_bytes(good)
    os.utime(moments, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    res = snakemake(wf, "-j1", "results/merges/ota_ffg/model", config=cfg)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (merge_dir / "model/model.safetensors").stat().st_size > 0


@pytest.mark.slow
def test_full_demo_experts_beat_the_base_on_their_own_task(tmp_path):
    """The default config's models, as `make demo` builds them: each expert gains >= 30
    points on its own task. (The rest of the chain runs in the tiny end-to-end test.)"""
    cfg = default_config()
    targets = [f"results/evaluation/builtin/{m}.json" for m in ["base", *cfg["demo"]["experts"]]]
    res = snakemake(tmp_path, "--profile", str(REPO / "profiles/local"), "-j2", *targets, config=cfg)
    assert res.returncode == 0, res.stderr[-3000:]
    # 2-thread training jobs one at a time on 2 cores (two at once: 127 s per expert, not 16-21 s)
    assert most_threads_at_once(res.stderr) == 2
    em = {}
    for t in targets:
        for row in yaml.safe_load((tmp_path / t).read_text()):
            if row["metric"] == "exact_match":
                em.setdefault(row["model"], {})[row["task"]] = row["score"]
    print(pd.DataFrame(em).T.round(3).to_string())
    for expert, spec in cfg["demo"]["experts"].items():
        assert em[expert][spec["task"]] - em["base"][spec["task"]] >= 0.30, expert
    assert 0.1 <= sum(em["base"].values()) / len(em["base"]) <= 0.5
