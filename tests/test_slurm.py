"""The SLURM profile on a real single-node SLURM (started by .ci/slurm-up.sh).

Skipped where no SLURM answers, unless OTAMERGE_REQUIRE_SLURM=1 (CI) makes that a failure.
"""

import re
import subprocess

import pytest

from conftest import REPO, tiny_config
from workflow_utils import slurm_required, slurm_up, snakemake


pytestmark = pytest.mark.skipif(
    not slurm_up() and not slurm_required(),
    reason="no SLURM here (run .ci/slurm-up.sh as root)")


def _jobs_of(workdir) -> dict[str, dict[str, str]]:
    """SLURM's own record of the jobs run in ``workdir``: rule (from the plugin's comment)
    -> requested memory, time limit, GPUs and exit code."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, check=True).stdout
    jobs = {}
    for line in out.splitlines():
        f = dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", line))
        if f.get("WorkDir") == str(workdir) and f.get("Comment", "").startswith("rule_"):
            jobs[f["Comment"][len("rule_"):]] = f
    return jobs


@pytest.mark.long
def test_slurm_profile_runs_jobs_with_their_resources_on_a_real_slurm(tmp_path):
    assert slurm_up(), "OTAMERGE_REQUIRE_SLURM=1 but sinfo shows no usable node"
    cfg = tiny_config("cluster")
    wf = tmp_path / "wf"
    targets = ["results/seed0/merges/ties/model", "results/seed0/evaluation/builtin/ffg/add/fisher/0.1.json"]
    # squeue for job states: this SLURM has no accounting (sacct); timeout guards against
    # the plugin's known hang when its status command fails
    res = snakemake(wf, "--profile", str(REPO / "profiles/slurm"), "--jobs", "4", "--latency-wait", "5",
                    "--seconds-between-status-checks", "2", "--slurm-status-command", "squeue",
                    "--slurm-init-seconds-before-status-checks", "2", *targets, config=cfg, timeout=420)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (wf / "results/seed0/merges/ties/model/model.safetensors").stat().st_size > 0
    jobs = _jobs_of(wf)
    # the plugin names a job by its rule and wildcard values (the seed first)
    assert set(jobs) == {"demo_base_wildcards_0", "demo_expert_wildcards_0_add", "demo_expert_wildcards_0_rev",
                         "merge_wildcards_0_ties", "ffg_wildcards_0_add_fisher_0.1",
                         "evaluate_builtin_wildcards_0_ffg_add_fisher_0.1"}, sorted(jobs)
    assert all(j["JobState"] == "COMPLETED" and j["ExitCode"] == "0:0" for j in jobs.values())
    # GPU rules at 2B parameters: one GPU; memory and time limit scaled with the model
    merge, ffg = jobs["merge_wildcards_0_ties"], jobs["ffg_wildcards_0_add_fisher_0.1"]
    assert (merge["TresPerJob"], merge["MinMemoryNode"], merge["TimeLimit"]) == ("gres:gpu:1", "9000M", "00:30:00")
    assert (ffg["TresPerJob"], ffg["MinMemoryNode"], ffg["TimeLimit"]) == ("gres:gpu:1", "4000M", "00:20:00")
    # CPU rule: no GPU
    expert = jobs["demo_expert_wildcards_0_add"]
    assert "TresPerJob" not in expert and expert["MinMemoryNode"] == "2000M" and expert["NumCPUs"] == "1"
