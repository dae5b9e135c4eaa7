#!/usr/bin/env python3
"""Submit one Snakemake jobscript with qsub; print the PBS job id.

Snakemake's cluster-generic executor calls this with the jobscript path as the last
argument. The job's properties are read from the jobscript's ``# properties = {...}``
line, and qsub is run with an argument list, so no value can inject into a shell.
"""

import json
import os
import re
import subprocess
import sys


def job_properties(jobscript: str) -> dict:
    with open(jobscript) as fh:
        for line in fh:
            if line.startswith("# properties = "):
                return json.loads(line[len("# properties = "):])
    raise SystemExit(f"submit.py: {jobscript} has no '# properties = ' line")


def qsub_args(props: dict, jobscript: str, log_dir: str = "logs/pbs") -> list[str]:
    res = props.get("resources", {})
    select = f"select=1:ncpus={int(props.get('threads', 1))}:mem={int(res.get('mem_mb', 4000))}mb"
    if int(res.get("gpu", 0) or 0) > 0:
        select += f":ngpus={int(res['gpu'])}"
    minutes = int(res.get("runtime", 60))
    walltime = f"{minutes // 60:02d}:{minutes % 60:02d}:00"
    # job names: PBS allows letters, digits, '_' and '-' only (at most 236 chars)
    name = re.sub(r"[^A-Za-z0-9_-]", "_", f"smk-{props.get('rule', 'job')}")[:200]
    return ["qsub", "-N", name, "-l", select, "-l", f"walltime={walltime}", "-j", "oe",
            "-o", log_dir, jobscript]


def main() -> None:
    jobscript = sys.argv[-1]
    os.makedirs("logs/pbs", exist_ok=True)
    out = subprocess.run(qsub_args(job_properties(jobscript), jobscript),
                         check=True, capture_output=True, text=True)
    print(out.stdout.strip())


if __name__ == "__main__":
    main()
