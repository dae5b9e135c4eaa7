#!/usr/bin/env python3
"""Report a PBS job's state to Snakemake: prints exactly one of running, success, failed
and always exits 0 (a non-zero exit would make Snakemake treat the check itself as an
error). qstat -x keeps finished jobs for the server's job_history_duration; past that
tracejob's accounting records still tell the exit status."""

import json
import re
import subprocess
import sys


def state(qstat_json: str, job_id: str) -> str:
    """The state of ``job_id`` from `qstat -x -f -F json` output."""
    jobs = json.loads(qstat_json).get("Jobs", {})
    job = jobs.get(job_id) or next(iter(jobs.values()), {})
    if job.get("job_state") not in ("F", "X"):  # Q, H, W, R, E, B...: not finished yet
        return "running"
    return "success" if int(job.get("Exit_status", 1)) == 0 else "failed"


def traced_state(tracejob_output: str) -> str | None:
    """Exit status from tracejob's log lines ('Exit_status=N'), or None if absent."""
    codes = re.findall(r"Exit_status=(-?\d+)", tracejob_output)
    if not codes:
        return None
    return "success" if int(codes[-1]) == 0 else "failed"


def _run(cmd: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None


def check(job_id: str) -> str:
    res = _run(["qstat", "-x", "-f", "-F", "json", job_id])
    if res is not None and res.returncode == 0 and res.stdout.strip():
        try:
            return state(res.stdout, job_id)
        except (ValueError, TypeError):
            pass
    traced = _run(["tracejob", "-n", "30", job_id])
    if traced is not None and traced.returncode == 0:
        found = traced_state(traced.stdout)
        if found:
            return found
    if res is not None and "Unknown Job Id" in res.stderr:
        return "failed"  # neither qstat's history nor tracejob knows it: it is gone
    return "running"  # a transient server error: ask again later


def main() -> None:
    try:
        print(check(sys.argv[1]))
    except Exception:  # never fail the status check itself
        print("running")


if __name__ == "__main__":
    main()
