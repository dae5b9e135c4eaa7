"""Running Snakemake on the repository's workflow from a test folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, *args: str, config: dict | None = None,
              env: dict | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run the workflow with ``workdir`` as working directory (and its config.yaml, if given)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    if config is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(workdir / "config.yaml")]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run as {rule: count}."""
    block = output.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M) if m[1] != "total"}


def rule_resources(output: str, rule: str) -> dict[str, str]:
    """gpu, mem_mb and runtime of the first job of ``rule`` in a (dry) run's printout."""
    block = re.search(rf"^rule {rule}:\n(.*?)^\s*$", output, re.M | re.S)[1]
    line = re.search(r"^\s*resources: (.*)$", block, re.M)[1]
    pairs = dict(kv.split("=", 1) for kv in line.split(", "))
    return {k: pairs[k] for k in ("gpu", "mem_mb", "runtime") if k in pairs}


def most_threads_at_once(printout: str) -> int:
    """The most threads that the jobs of a local run held at one moment, from its printout
    (a job's block gives its jobid and, above one, its threads; 'Finished jobid' ends it)."""
    running: dict[str, int] = {}
    job, most = None, 0
    for line in printout.splitlines():
        text = line.strip()
        if re.fullmatch(r"(local)?rule \w+:", text):
            job = None
        elif text.startswith("jobid:") and job is None:
            job = text.split()[1]
            running[job] = 1
        elif text.startswith("threads:") and job is not None:
            running[job] = int(text.split()[1])
        elif m := re.match(r"Finished jobid: (\d+)", text):
            running.pop(m[1], None)
        most = max(most, sum(running.values()))
    return most


def slurm_up() -> bool:
    """A SLURM here with a node ready to take jobs (.ci/slurm-up.sh starts one)."""
    if shutil.which("sinfo") is None:
        return False
    res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return res.returncode == 0 and bool(re.search(r"idle|mixed|alloc", res.stdout))


def slurm_required() -> bool:
    """CI sets OTAMERGE_REQUIRE_SLURM=1 so that the SLURM tests run there instead of skipping."""
    return os.environ.get("OTAMERGE_REQUIRE_SLURM") == "1"
