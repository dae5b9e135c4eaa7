"""Which PBS flavour the cluster speaks, for pbs_dialect auto (the default).

Asked once per working directory and cached in logs/pbs/dialect.json (delete it to ask
again); the choice and the evidence go to logs/pbs/submit.log and to stderr. In order:
- ``qsub`` is a script that calls ``sbatch``: SLURM's slurm-wlm-torque front end -> torque;
- ``qstat --version``: PBS Professional and OpenPBS print ``pbs_version = 2022.1.1`` (or
  19.1.3, 23.06.06) -> pro; Torque prints ``Version: 6.1.3`` -> torque;
- ``qstat -Bf``: the server's ``pbs_version``: Torque's are 2.x to 6.x -> torque, later
  ones -> pro;
- none of these answers: pro, with a line saying so and how to set it.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

CACHE = "logs/pbs/dialect.json"
LOG = "logs/pbs/submit.log"


def _run(args: list[str]) -> str:
    """stdout and stderr of a short query ('' when it cannot run)."""
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout + out.stderr


def _by_version(version: str) -> str:
    """Torque's releases are 2.x to 6.x; PBS Pro's 7.x to 19.x and year-numbered, OpenPBS 20.x on."""
    return "torque" if re.match(r"[2-6]\.", version) else "pro"


def detect() -> tuple[str, str]:
    """(dialect, the evidence) from the PBS client commands on PATH."""
    qsub = shutil.which("qsub")
    if qsub:
        try:
            with open(qsub, "rb") as fh:
                head = fh.read(1 << 16)
        except OSError:
            head = b""
        if head.startswith(b"#!") and b"sbatch" in head:
            return "torque", f"{qsub} is a script that calls sbatch (SLURM's slurm-wlm-torque)"
    said = _run(["qstat", "--version"])
    if m := re.search(r"pbs_version\s*=\s*(\S+)", said):
        return "pro", f"qstat --version: pbs_version = {m[1]} (PBS Professional / OpenPBS)"
    if m := re.search(r"^\s*Version:\s*(\S+)", said, re.M):
        return _by_version(m[1]), f"qstat --version: Version: {m[1]} (Torque)"
    server = _run(["qstat", "-Bf"])
    if m := re.search(r"pbs_version\s*=\s*(\S+)", server):
        return _by_version(m[1]), f"qstat -Bf: pbs_version = {m[1]}"
    first = (said.strip().splitlines() or ["no answer"])[0]
    return "pro", (f"could not tell (qstat --version: {first!r}): set pbs_dialect (pro or torque) "
                   "under default-resources if jobs fail")


def resolve(setting: str) -> str:
    """``setting`` itself, or for auto the cached or detected dialect."""
    if setting != "auto":
        return setting
    try:
        with open(CACHE) as fh:
            return json.load(fh)["dialect"]
    except (OSError, ValueError, KeyError):
        pass
    dialect, why = detect()
    os.makedirs(os.path.dirname(CACHE), exist_ok=True)
    tmp = f"{CACHE}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump({"dialect": dialect, "why": why, "time": time.time()}, fh)
    os.replace(tmp, CACHE)
    line = f"pbs_dialect auto: {dialect} ({why}); cached in {CACHE}"
    with open(LOG, "a") as fh:
        fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
    print(f"submit.py: {line}", file=sys.stderr)
    return dialect
