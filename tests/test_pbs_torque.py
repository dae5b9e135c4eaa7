"""The PBS profile's torque dialect against a PBS client nobody here wrote: Debian's
slurm-wlm-torque (Torque-style qsub/qstat/qdel over SLURM) on the single-node SLURM that
.ci/slurm-up.sh starts. What the jobs got is read back from SLURM's own job records.

Skipped where that client or SLURM is missing, unless OTAMERGE_REQUIRE_SLURM=1 (CI)
makes it a failure.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime

import pytest

from conftest import REPO, tiny_config
from workflow_utils import slurm_required, slurm_up, snakemake

PBS = REPO / "profiles/pbs"


def _torque_client_up() -> bool:
    qsub = shutil.which("qsub")
    if qsub is None or shutil.which("sinfo") is None:
        return False
    with open(qsub, errors="replace") as fh:
        if "sbatch" not in fh.read():  # slurm-wlm-torque's qsub is a Perl front end to sbatch
            return False
    return slurm_up()


pytestmark = pytest.mark.skipif(
    not _torque_client_up() and not slurm_required(),
    reason="no slurm-wlm-torque over a running SLURM here (run .ci/slurm-up.sh as root)")


def _slurm_record(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                         check=True).stdout
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", out))


def _slurm_jobs_in(workdir) -> dict[str, list[dict[str, str]]]:
    """SLURM's records of the jobs submitted from ``workdir``, by rule (from the job name
    smk-<rule>-<wildcards>), oldest first."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, check=True).stdout
    jobs: dict[str, list[dict[str, str]]] = {}
    for line in out.splitlines():
        f = dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", line))
        if f.get("WorkDir") == str(workdir):
            jobs.setdefault(f["JobName"].split("-")[1], []).append(f)
    for v in jobs.values():
        v.sort(key=lambda f: int(f["JobId"]))
    return jobs


def _jobscript(path, rule: str, body: str, **resources):
    props = {"rule": rule, "threads": 1, "wildcards": {},
             "resources": {"runtime": 5, "pbs_dialect": "torque", **resources}}
    path.write_text(f"#!/bin/sh\n# properties = {json.dumps(props)}\n{body}\n")
    return path


def _wait_for_states(ids: dict[str, str], cwd, limit: float = 180.0) -> dict[str, tuple[str, datetime]]:
    """Ask status.py about every job each 0.5 s until it says something else than
    running (at most ``limit`` seconds); each job's state and when it was first reported."""
    start, states = time.monotonic(), {}
    while len(states) < len(ids):
        for name, job_id in ids.items():
            if name in states:
                continue
            res = subprocess.run([sys.executable, str(PBS / "status.py"), job_id], capture_output=True,
                                 text=True, cwd=cwd)
            assert res.returncode == 0 and res.stdout.count("\n") == 1, res
            if res.stdout.strip() != "running" or time.monotonic() - start > limit:
                states[name] = (res.stdout.strip(), datetime.now())
        time.sleep(0.5)
    return states


def _seconds_after_end(job_id: str, when: datetime) -> float:
    """Seconds from SLURM's end time of the job (1-s resolution) to ``when``."""
    return (when.replace(microsecond=0) - datetime.fromisoformat(_slurm_record(job_id)["EndTime"])).total_seconds()


def test_torque_client_exit_0_success_exit_1_failed_killed_job_failed_in_bounded_time(tmp_path):
    """submit.py -> slurm-wlm-torque's qsub -> SLURM; status.py -> its qstat, which shows a
    finished job as C without any exit status: the wrapper's exit record decides, and a job
    whose wrapper is killed before it can write one (here it kills it itself, as an
    out-of-memory kill would) is failed once its pbs_state_timeout has passed."""
    assert _torque_client_up(), "OTAMERGE_REQUIRE_SLURM=1 but slurm-wlm-torque or SLURM is missing"
    scripts = {
        "gpu_ok": _jobscript(tmp_path / "ok.sh", "gpu_ok", "exit 0", mem_mb=1500, gpu=1),
        "cpu_bad": _jobscript(tmp_path / "bad.sh", "cpu_bad", "exit 1", mem_mb=700, gpu=0),
        "killed": _jobscript(tmp_path / "killed.sh", "killed", "kill -9 $PPID; sleep 60", mem_mb=500, gpu=0,
                             pbs_state_timeout=4),
    }
    ids, submitted = {}, {}
    for name, js in scripts.items():
        submitted[name] = datetime.now()
        res = subprocess.run([sys.executable, str(PBS / "submit.py"), str(js)], capture_output=True, text=True,
                             cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        ids[name] = res.stdout.strip()
    states = _wait_for_states(ids, tmp_path)
    print("\nstate, seconds after submission, seconds after SLURM's end time:",
          {k: (s, round((t - submitted[k]).total_seconds(), 1), _seconds_after_end(ids[k], t))
           for k, (s, t) in states.items()})
    assert [states[k][0] for k in ("gpu_ok", "cpu_bad", "killed")] == ["success", "failed", "failed"]
    assert _seconds_after_end(ids["gpu_ok"], states["gpu_ok"][1]) <= 3
    assert _seconds_after_end(ids["cpu_bad"], states["cpu_bad"][1]) <= 3
    # the killed job left no exit record: failed after its 4-s pbs_state_timeout, not never
    assert not list((tmp_path / "logs/pbs/jobs").glob("smk-killed.*.exit"))
    assert 4 <= _seconds_after_end(ids["killed"], states["killed"][1]) <= 8
    assert f"PBS job {ids['killed']}: state unknown for" in (tmp_path / "logs/pbs/status.log").read_text()
    gpu, cpu = _slurm_record(ids["gpu_ok"]), _slurm_record(ids["cpu_bad"])
    print("SLURM recorded:", {k: {f: r.get(f) for f in ("MinMemoryNode", "TresPerNode", "NumCPUs", "TimeLimit",
                                                          "ExitCode")} for k, r in (("gpu", gpu), ("cpu", cpu))})
    assert (gpu["MinMemoryNode"], gpu.get("TresPerNode"), gpu["TimeLimit"]) == ("1500M", "gres:gpu:1", "00:05:00")
    assert (cpu["MinMemoryNode"], cpu.get("TresPerNode"), cpu["NumCPUs"]) == ("700M", None, "1")
    assert (gpu["ExitCode"], cpu["ExitCode"]) == ("0:0", "1:0")


FAIL_FFG_ONCE = '''\
# test hook (tests/test_pbs_torque.py): the first ffg job exits 1 as soon as Python starts
import os, sys
if "--target-jobs" in sys.argv and any(a.startswith("ffg:") for a in sys.argv):
    try:
        os.close(os.open(os.path.join(os.environ["PBS_TEST_DIR"], "ffg-failed"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        pass
    else:
        sys.stderr.write("test hook: this ffg job fails once\\n")
        os._exit(1)
'''


def _reported(printout: str) -> dict[str, datetime]:
    """When Snakemake reported each external job id finished or failed, from its printout
    ('Submitted job N with external jobid X', then '[date]' lines before 'Finished jobid: N'
    or 'Error in rule')."""
    current: dict[str, str] = {}  # Snakemake job id -> external id of its latest attempt
    stamp, out = None, {}
    for line in printout.splitlines():
        if m := re.match(r"\[(\w{3} \w{3} +\d+ [\d:]{8} \d{4})\]$", line.strip()):
            stamp = datetime.strptime(" ".join(m[1].split()), "%a %b %d %H:%M:%S %Y")
        elif m := re.search(r"Submitted job (\d+) with external jobid '([^']+)'", line):
            current[m[1]] = m[2]
        elif (m := re.match(r"Finished jobid: (\d+)", line.strip())) and m[1] in current:  # not local rules
            out[current[m[1]]] = stamp
        elif m := re.match(r"external_jobid: (\S+)", line.strip()):
            out[m[1]] = stamp
    return out


@pytest.mark.long
def test_pbs_profile_torque_dialect_end_to_end_on_slurm_wlm_torque(tmp_path):
    """Part of the tiny DAG (base -> expert -> FFG, FFG a GPU rule) through the PBS profile
    with no pbs_dialect set (auto finds torque); the first FFG job fails and is retried
    with twice the memory."""
    assert _torque_client_up(), "OTAMERGE_REQUIRE_SLURM=1 but slurm-wlm-torque or SLURM is missing"
    cfg = tiny_config("cluster")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAIL_FFG_ONCE)
    env = {**os.environ, "PBS_TEST_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)}
    wf = tmp_path / "wf"
    start = time.monotonic()
    res = snakemake(wf, "--profile", str(PBS), "--jobs", "4", "results/seed0/ffg/add/fisher/0.1",
                    "--latency-wait", "5", "--seconds-between-status-checks", "1",
                    "--max-status-checks-per-second", "20",
                    "--default-resources", "mem_mb=4000", "runtime=60",  # pbs_dialect: auto, the default
                    "pbs_state_timeout=60", config=cfg, env=env, timeout=400)
    wall = time.monotonic() - start
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "ffg-failed").exists()
    chosen = json.loads((wf / "logs/pbs/dialect.json").read_text())
    assert chosen["dialect"] == "torque" and "calls sbatch" in chosen["why"], chosen
    jobs = _slurm_jobs_in(wf)
    print(f"\nend-to-end: {sum(map(len, jobs.values()))} SLURM jobs in {wall:.0f} s")
    for name, recs in jobs.items():
        for r in recs:
            print(name, {f: r.get(f) for f in ("JobId", "JobState", "ExitCode", "MinMemoryNode", "TresPerNode",
                                                "NumCPUs", "TimeLimit")})
    assert {n: len(v) for n, v in jobs.items()} == {"demo_base": 1, "demo_expert": 1, "ffg": 2}
    # GPU rule at 2B parameters: one GPU, 2000 + 1000 x 2 MB and 10 + 5 x 2 min, doubled on the retry
    first, retry = jobs["ffg"]
    assert first["JobName"] == retry["JobName"]
    assert (first["JobState"], first["ExitCode"], first["TresPerNode"], first["MinMemoryNode"],
            first["TimeLimit"]) == ("FAILED", "1:0", "gres:gpu:1", "4000M", "00:20:00")
    assert (retry["JobState"], retry["ExitCode"], retry["TresPerNode"], retry["MinMemoryNode"],
            retry["TimeLimit"]) == ("COMPLETED", "0:0", "gres:gpu:1", "8000M", "00:40:00")
    # CPU rules: no GPU
    for name in ("demo_base", "demo_expert"):
        (rec,) = jobs[name]
        assert (rec["JobState"], "TresPerNode" in rec, rec["MinMemoryNode"], rec["NumCPUs"]) == (
            "COMPLETED", False, "2000M", "1")
    # every job's end reported within a few status rounds of SLURM's end time
    reported = _reported(res.stderr)
    delays = {r["JobId"]: (reported[r["JobId"]] - datetime.fromisoformat(r["EndTime"])).total_seconds()
              for recs in jobs.values() for r in recs}
    print("seconds from SLURM's end time to Snakemake's report:", delays)
    assert all(-1 <= d <= 15 for d in delays.values()), delays
    assert not (wf / "logs/pbs/status.log").exists()  # no job's state was ever unknown
