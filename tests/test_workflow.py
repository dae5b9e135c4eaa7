import pandas as pd
import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from conftest import REPO, build_tiny, default_config, tiny_config
from workflow_utils import job_counts, snakemake

SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")


def test_dry_run_lists_the_demo_rules(tmp_path):
    res = snakemake(tmp_path, "--profile", str(REPO / "profiles/local"), "-j1", "-n",
                    config=default_config())
    assert res.returncode == 0, res.stderr
    assert job_counts(res.stdout + res.stderr) == {
        "demo_base": 1, "demo_expert": 5, "evaluate_builtin": 6, "summary": 1, "all": 1}


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


def test_tiny_workflow_runs_and_reruns_only_the_changed_expert(tmp_path):
    cfg = tiny_config()
    cfg["demo"]["threads"] = 1
    run = snakemake(tmp_path / "wf", "--cores", "2", config=cfg)
    assert run.returncode == 0, run.stderr[-3000:]
    scores = pd.read_csv(tmp_path / "wf/results/summary/scores.csv")
    assert len(scores) == 3 * 5 * 2  # models x tasks x metrics
    assert set(scores.model) == {"base", "add", "rev"} and scores.score.between(0, 1).all()
    assert (tmp_path / "wf/logs/demo_expert/rev.log").stat().st_size > 0
    # the workflow's jobs (separate processes) give the same bytes as an in-process build
    ref = build_tiny(tmp_path / "ref", cfg)
    for f in ["base/model.safetensors", "experts/rev/export/exp_avg_sq.safetensors"]:
        assert (tmp_path / "wf/resources/demo" / f).read_bytes() == (ref / f).read_bytes(), f

    same = snakemake(tmp_path / "wf", "-n", config=cfg)
    assert "Nothing to be done" in same.stdout + same.stderr
    cfg["demo"]["experts"]["rev"]["steps"] = 7
    changed = snakemake(tmp_path / "wf", "-n", config=cfg)
    assert job_counts(changed.stdout + changed.stderr) == {
        "demo_expert": 1, "evaluate_builtin": 1, "summary": 1, "all": 1}
    assert "experts/rev" in changed.stdout and "experts/add" not in changed.stdout


@pytest.mark.slow
def test_full_demo_experts_beat_the_base_on_their_own_task(tmp_path):
    """The default config, as `make demo` runs it: each expert gains >= 30 points."""
    res = snakemake(tmp_path, "--profile", str(REPO / "profiles/local"), "-j1", config=default_config())
    assert res.returncode == 0, res.stderr[-3000:]
    matrix = yaml.safe_load((tmp_path / "results/summary/accuracy.json").read_text())
    em = matrix["builtin"]["exact_match"]
    print(pd.DataFrame(em).T.round(3).to_string())
    for expert, spec in default_config()["demo"]["experts"].items():
        assert em[expert][spec["task"]] - em["base"][spec["task"]] >= 0.30, expert
    assert 0.1 <= em["base"]["average"] <= 0.5
