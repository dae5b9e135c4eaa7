#!/usr/bin/env python3
"""Submit one Snakemake jobscript with qsub; print the PBS job id.

Snakemake's cluster-generic executor calls this with the jobscript path as the last
argument. The job's properties are read from the jobscript's ``# properties = {...}``
line, and qsub is run with an argument list, so no value can inject into a shell.

Settings, all under ``default-resources`` in the profile (or ``--default-resources``):
  pbs_dialect        auto (the default: asked of the cluster once, see dialect.py),
                     pro (PBS Pro / OpenPBS) or torque (Torque, and Torque-compatible
                     wrappers such as SLURM's slurm-wlm-torque)
  pbs_torque_gpus    torque only: gpus (``nodes=1:ppn=N:gpus=G``, the default) or
                     naccelerators (``naccelerators=G``, Cray-style Torque sites)
  pbs_queue, pbs_account   -q and -A (empty: not passed)
  pbs_state_timeout  seconds a job's state may stay unknown before status.py reports it
                     failed (default 180)

qsub is not given Snakemake's jobscript itself but a small POSIX-sh wrapper,
logs/pbs/jobs/<token>.sh, that runs it and then writes its exit status to
logs/pbs/jobs/<token>.exit: status.py reads that record first, so a job's result is known
even where qstat never shows an exit status (slurm-wlm-torque) or forgets finished jobs
(Torque's keep_completed, PBS without job history). logs/pbs/jobs/id-<job id>.json maps
the PBS job id to the token.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid

# status.py, beside this script, owns where job records live and how long a state may be unknown
from status import DEFAULT_STATE_TIMEOUT, JOBS_DIR, record_path
from dialect import resolve

DIALECTS = ("auto", "pro", "torque")
TORQUE_GPUS = ("gpus", "naccelerators")
# queue and account names: some qsub front ends (slurm-wlm-torque's among them) pass their
# arguments on through a shell, so only characters no shell interprets are accepted
SAFE_NAME = re.compile(r"[A-Za-z0-9_.@+-]+")
# what a job id printed by qsub may look like (it becomes a file name and an argument)
SAFE_JOB_ID = re.compile(r"[A-Za-z0-9_.@\[\]-]+")


def job_properties(jobscript: str) -> dict:
    with open(jobscript) as fh:
        for line in fh:
            if line.startswith("# properties = "):
                return json.loads(line[len("# properties = "):])
    raise SystemExit(f"submit.py: {jobscript} has no '# properties = ' line")


def job_name(props: dict) -> str:
    """smk-<rule>-<wildcard values>: PBS allows letters, digits, '_' and '-' (236 at most)."""
    parts = ["smk", str(props.get("rule", "job")), *map(str, props.get("wildcards", {}).values())]
    return re.sub(r"[^A-Za-z0-9_-]", "_", "-".join(parts))[:200]


def _choice(res: dict, key: str, allowed: tuple[str, ...]) -> str:
    value = str(res.get(key) or allowed[0]).strip().lower()
    if value not in allowed:
        raise SystemExit(f"submit.py: {key} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def dialect(props: dict) -> str:
    """pro or torque: the job's pbs_dialect, auto resolved (cached per working directory)."""
    return resolve(_choice(props.get("resources", {}), "pbs_dialect", DIALECTS))


def state_timeout(props: dict) -> int:
    value = props.get("resources", {}).get("pbs_state_timeout")
    try:
        return DEFAULT_STATE_TIMEOUT if value in (None, "") else max(0, int(value))
    except (TypeError, ValueError):
        raise SystemExit(f"submit.py: pbs_state_timeout must be a number of seconds, not {value!r}")


def walltime(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def resource_args(props: dict) -> list[str]:
    """The -l arguments for the job's dialect.

    pro:    -l select=1:ncpus=T:mem=Mmb[:ngpus=G] -l walltime=HH:MM:SS
    torque: -l nodes=1:ppn=T[:gpus=G],mem=Mmb,walltime=HH:MM:SS   (one -l: Torque takes a
            comma list, and slurm-wlm-torque's qsub keeps only the last of several -l)
            or with pbs_torque_gpus=naccelerators: -l nodes=1:ppn=T,naccelerators=G,...
    """
    res = props.get("resources", {})
    threads = int(props.get("threads", 1))
    mem_mb = int(res.get("mem_mb", 4000))
    gpus = int(res.get("gpu", 0) or 0)
    wall = walltime(int(res.get("runtime", 60)))
    if dialect(props) == "pro":
        select = f"select=1:ncpus={threads}:mem={mem_mb}mb"
        if gpus > 0:
            select += f":ngpus={gpus}"
        return ["-l", select, "-l", f"walltime={wall}"]
    nodes = f"nodes=1:ppn={threads}"
    extra = []
    if gpus > 0:
        if _choice(res, "pbs_torque_gpus", TORQUE_GPUS) == "gpus":
            nodes += f":gpus={gpus}"
        else:
            extra.append(f"naccelerators={gpus}")
    return ["-l", ",".join([nodes, *extra, f"mem={mem_mb}mb", f"walltime={wall}"])]


def qsub_args(props: dict, script: str, log_dir: str = "logs/pbs", output: str | None = None) -> list[str]:
    """qsub's argument list: ncpus/ppn from threads, mem from mem_mb, GPUs from gpu,
    walltime from runtime (minutes); queue and account from the resources pbs_queue and
    pbs_account. ``output`` is the job's log file (torque), else ``log_dir`` (pro: PBS
    names the file in that folder)."""
    res = props.get("resources", {})
    out = log_dir if dialect(props) == "pro" or output is None else output
    args = ["qsub", "-N", job_name(props), *resource_args(props), "-S", "/bin/sh", "-j", "oe", "-o", out]
    for flag, key in (("-q", "pbs_queue"), ("-A", "pbs_account")):
        value = str(res.get(key) or "").strip()
        if value:
            if not SAFE_NAME.fullmatch(value):
                raise SystemExit(f"submit.py: {key} {value!r} has characters other than letters, "
                                 "digits and _ . @ + -")
            args += [flag, value]
    return [*args, script]


def wrapper_text(jobscript: str, exit_record: str) -> str:
    """A POSIX-sh script that runs Snakemake's jobscript and records its exit status
    (written to a temporary name and renamed, so a reader never sees it half written)."""
    js, rec = shlex.quote(os.path.abspath(jobscript)), shlex.quote(os.path.abspath(exit_record))
    return ("#!/bin/sh\n"
            "# written by profiles/pbs/submit.py: run Snakemake's job script, record its exit status\n"
            f"/bin/sh {js}\n"
            "status=$?\n"
            f"echo \"$status\" > {rec}.tmp && mv {rec}.tmp {rec}\n"
            "exit \"$status\"\n")


def submit(jobscript: str) -> str:
    props = job_properties(jobscript)
    timeout = state_timeout(props)  # settings checked before anything is submitted
    os.makedirs(JOBS_DIR, exist_ok=True)
    token = f"{job_name(props)[:80]}.{uuid.uuid4().hex[:10]}"
    wrapper = os.path.join(JOBS_DIR, f"{token}.sh")
    exit_record = os.path.join(JOBS_DIR, f"{token}.exit")
    with open(wrapper, "w") as fh:
        fh.write(wrapper_text(jobscript, exit_record))
    os.chmod(wrapper, 0o755)
    args = qsub_args(props, wrapper, output=os.path.join(JOBS_DIR, f"{token}.log"))
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SystemExit(f"submit.py: qsub failed: {err}")
    lines = out.stdout.strip().splitlines()
    job_id = lines[-1].strip() if lines else ""
    if out.returncode != 0 or not SAFE_JOB_ID.fullmatch(job_id):
        raise SystemExit(f"submit.py: qsub exited {out.returncode} without a job id\n"
                         f"command: {args}\nstdout: {out.stdout}\nstderr: {out.stderr}")
    record = {"job_id": job_id, "token": token, "exit_record": os.path.abspath(exit_record), "dialect": dialect(props),
              "state_timeout": timeout, "submitted": time.time(), "qsub": args}
    tmp = record_path(job_id) + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(record, fh)
    os.replace(tmp, record_path(job_id))
    return job_id


def main() -> None:
    print(submit(sys.argv[-1]))


if __name__ == "__main__":
    main()
