#!/usr/bin/env python3
"""Report a PBS job's state to Snakemake: running, success or failed."""

import json
import subprocess
import sys


def state(qstat_json: str, job_id: str) -> str:
    jobs = json.loads(qstat_json).get("Jobs", {})
    job = jobs.get(job_id) or next(iter(jobs.values()), {})
    if job.get("job_state") != "F":
        return "running"
    return "success" if int(job.get("Exit_status", 1)) == 0 else "failed"


def main() -> None:
    job_id = sys.argv[1]
    res = subprocess.run(["qstat", "-x", "-f", "-F", "json", job_id], capture_output=True, text=True)
    if res.returncode == 0 and res.stdout.strip():
        print(state(res.stdout, job_id))
    else:  # a job PBS no longer knows has failed; any other error may be transient
        print("failed" if "Unknown Job Id" in res.stderr else "running")


if __name__ == "__main__":
    main()
