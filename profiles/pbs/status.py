#!/usr/bin/env python3
"""Report a PBS job's state to Snakemake: prints exactly one of running, success, failed
and always exits 0 (a non-zero exit would make Snakemake treat the check itself as an
error).

Where the answer comes from, first found wins:
1. the job's exit record, logs/pbs/jobs/<token>.exit, written by the wrapper that
   submit.py submits once Snakemake's jobscript has ended (no server is asked);
2. plain `qstat -f JOBID`, which PBS Pro, OpenPBS and Torque all print: job_state, and
   Exit_status (PBS Pro, OpenPBS) or exit_status (Torque) once the job has finished;
3. only if qstat -f does not show the job: `qstat -x -f -F json JOBID` (PBS Pro and
   OpenPBS keep finished jobs for job_history_duration); a server that rejects those
   options (Torque, slurm-wlm-torque) is not asked again in this working directory;
4. `tracejob` (PBS accounting logs), where that command exists.

A state that none of these can determine (qstat fails or has forgotten the job, a
finished job without an exit status and no record, a state letter with no meaning
here) is reported as running for at most the job's pbs_state_timeout (seconds, set at
submission; default 180, six of the profile's 30-s status rounds) and then as failed,
with a line on stderr (Snakemake's output) and in logs/pbs/status.log: a job never waits
forever.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

JOBS_DIR = "logs/pbs/jobs"
STATUS_LOG = "logs/pbs/status.log"
NO_HISTORY_MARK = os.path.join(JOBS_DIR, "qstat-x-unsupported")
DEFAULT_STATE_TIMEOUT = 180

# job_state letters. Still in the system: queued, running, held, waiting, in transit,
# exiting, suspended, array begun. Finished: F (PBS Pro, OpenPBS), X (finished subjob),
# C (Torque, slurm-wlm-torque). Any other letter - M (moved to another server), U (PBS
# Pro: suspended for workstation activity; slurm-wlm-torque: a SLURM state it has no
# letter for, such as OUT_OF_MEMORY) - does not say whether the job will end here.
RUNNING = set("QRHWTESB")
FINISHED = set("FXC")


def _safe(job_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", job_id).lstrip(".") or "_"


def record_path(job_id: str) -> str:
    return os.path.join(JOBS_DIR, f"id-{_safe(job_id)}.json")


def unknown_path(job_id: str) -> str:
    return os.path.join(JOBS_DIR, f"id-{_safe(job_id)}.unknown")


def _exit_code(attrs: dict):
    for key, value in attrs.items():
        if key.lower() == "exit_status":
            try:
                return int(str(value).strip())
            except ValueError:
                return None
    return None


def job_result(attrs: dict | None) -> str | None:
    """running / success / failed from a job's attributes (qstat -f text or JSON), or
    None when they do not tell."""
    if not attrs:
        return None
    letter = str(attrs.get("job_state", "")).strip()[:1].upper()
    if letter in RUNNING:
        return "running"
    if letter in FINISHED:
        code = _exit_code(attrs)
        if code is not None:
            return "success" if code == 0 else "failed"
    return None


def parse_qstat_f(text: str, job_id: str) -> dict | None:
    """The attributes of ``job_id`` in `qstat -f` text: 'Job Id: ID' starts a job,
    '    name = value' lines follow; PBS Pro continues long values on lines that start
    with a tab. None if the text holds no such job."""
    blocks: list[tuple[str, dict]] = []
    attrs: dict | None = None
    last = None
    for line in text.splitlines():
        head = re.match(r"Job Id:\s*(\S+)", line)
        if head:
            attrs, last = {}, None
            blocks.append((head[1], attrs))
            continue
        if attrs is None:
            continue
        kv = re.match(r"\s+([A-Za-z_][\w.]*) =(?: (.*))?$", line)
        if kv:
            last = kv[1]
            attrs[last] = (kv[2] or "").strip()
        elif last and line[:1].isspace() and line.strip():
            attrs[last] += line[1:].rstrip() if line.startswith("\t") else line.strip()
    for bid, battrs in blocks:
        if bid == job_id or bid.startswith(job_id + ".") or job_id.startswith(bid + "."):
            return battrs
    return blocks[0][1] if len(blocks) == 1 else None


def state(qstat_json: str, job_id: str) -> str | None:
    """The state of ``job_id`` from `qstat -x -f -F json` output (None: not told)."""
    jobs = json.loads(qstat_json).get("Jobs", {})
    job = jobs.get(job_id) or (next(iter(jobs.values())) if len(jobs) == 1 else None)
    return job_result(job)


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


def _said(res: subprocess.CompletedProcess | None, what: str) -> str:
    if res is None:
        return f"{what}: could not run or timed out"
    text = " ".join((res.stderr.strip() or res.stdout.strip() or "no output").split())
    return f"{what} (exit {res.returncode}): {text[:200]}"


def load_record(job_id: str) -> dict:
    try:
        with open(record_path(job_id)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def recorded_state(record: dict) -> str | None:
    """From the exit status the job's wrapper wrote, if it is there."""
    path = record.get("exit_record")
    if not path:
        return None
    try:
        with open(path) as fh:
            return "success" if int(fh.read().strip()) == 0 else "failed"
    except (OSError, ValueError):
        return None


def query(job_id: str, record: dict) -> tuple[str | None, str]:
    """(running/success/failed, or None if undetermined; what the last source said)."""
    found = recorded_state(record)
    if found:
        return found, "exit record"
    res = _run(["qstat", "-f", job_id])
    attrs = parse_qstat_f(res.stdout, job_id) if res is not None and res.returncode == 0 else None
    found = job_result(attrs)
    if found:
        return found, "qstat -f"
    if attrs:
        # the job may have ended between reading its record and asking qstat: its wrapper
        # writes the record before the job ends, so a finished job's record is there now
        found = recorded_state(record)
        if found:
            return found, "exit record"
        evidence = (f"qstat -f: job_state = {attrs.get('job_state', '?')}, exit status "
                    f"{_exit_code(attrs)}, and no exit record")
    else:
        evidence = _said(res, "qstat -f")
        if not os.path.exists(NO_HISTORY_MARK):
            hist = _run(["qstat", "-x", "-f", "-F", "json", job_id])
            if hist is not None and hist.returncode == 0 and hist.stdout.strip():
                try:
                    found = state(hist.stdout, job_id)
                except ValueError:  # a server that ignored -F json and printed text
                    found = job_result(parse_qstat_f(hist.stdout, job_id))
                if found:
                    return found, "qstat -x"
            elif hist is not None and "unknown job" not in hist.stderr.lower() and re.search(
                    r"option|usage", hist.stdout + hist.stderr, re.I):
                os.makedirs(JOBS_DIR, exist_ok=True)
                with open(NO_HISTORY_MARK, "w") as fh:
                    fh.write(_said(hist, "qstat -x -f -F json") + "\n")
    if shutil.which("tracejob"):
        traced = _run(["tracejob", "-n", "30", job_id])
        if traced is not None and traced.returncode == 0:
            found = traced_state(traced.stdout)
            if found:
                return found, "tracejob"
    return None, evidence


def log(message: str) -> None:
    line = f"status.py: {message}"
    print(line, file=sys.stderr, flush=True)
    try:
        os.makedirs(os.path.dirname(STATUS_LOG), exist_ok=True)
        with open(STATUS_LOG, "a") as fh:
            fh.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")
    except OSError:
        pass


def undetermined(job_id: str, evidence: str, timeout: float, now: float) -> str:
    """running until the state has been unknown for ``timeout`` seconds, then failed."""
    path = unknown_path(job_id)
    try:
        with open(path) as fh:
            since = float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        since = now
        os.makedirs(JOBS_DIR, exist_ok=True)
        with open(path, "w") as fh:
            fh.write(f"{now}\n")
        if timeout > 0:
            log(f"PBS job {job_id}: state unknown ({evidence}); reported running, and failed "
                f"if still unknown after {timeout:g} s")
    if now - since >= timeout:
        log(f"PBS job {job_id}: state unknown for {now - since:.0f} s, over pbs_state_timeout "
            f"{timeout:g} s ({evidence}): reporting it FAILED")
        _remove(path)
        return "failed"
    return "running"


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def check(job_id: str, now: float | None = None) -> str:
    now = time.time() if now is None else now
    record = load_record(job_id)
    try:
        timeout = float(record.get("state_timeout", DEFAULT_STATE_TIMEOUT))
    except (TypeError, ValueError):
        timeout = DEFAULT_STATE_TIMEOUT
    try:
        found, evidence = query(job_id, record)
    except Exception as err:  # never fail the status check itself
        found, evidence = None, f"status.py error {err!r}"
    if found:
        _remove(unknown_path(job_id))
        return found
    return undetermined(job_id, evidence, timeout, now)


def main() -> None:
    job_id = sys.argv[1] if len(sys.argv) > 1 else ""
    try:
        print(check(job_id))
    except Exception as err:  # cannot even keep time: say failed rather than wait forever
        log(f"PBS job {job_id}: cannot track its state ({err!r}): reporting it FAILED")
        print("failed")


if __name__ == "__main__":
    main()
