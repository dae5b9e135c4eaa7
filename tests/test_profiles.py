import json
import os
import subprocess
import sys

import yaml

from conftest import REPO

PBS = REPO / "profiles/pbs"


def _jobscript(tmp_path, props):
    js = tmp_path / "snakejob.sh"
    js.write_text(f"#!/bin/sh\n# properties = {json.dumps(props)}\necho hi\n")
    return js


def test_pbs_submit_requests_cpus_memory_walltime_and_gpus(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "qsub").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$QSUB_ARGS"\necho 123.pbs\n')
    (fake / "qsub").chmod(0o755)
    js = _jobscript(tmp_path, {"rule": "merge; rm -rf $(x)", "threads": 4,
                               "resources": {"mem_mb": 32000, "runtime": 90, "gpu": 1}})
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "QSUB_ARGS": str(tmp_path / "args")}
    res = subprocess.run([sys.executable, str(PBS / "submit.py"), str(js)], capture_output=True,
                         text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "123.pbs"
    assert (tmp_path / "args").read_text().splitlines() == [
        "-N", "smk-merge__rm_-rf___x_", "-l", "select=1:ncpus=4:mem=32000mb:ngpus=1",
        "-l", "walltime=01:30:00", "-j", "oe", "-o", "logs/pbs", str(js)]


def test_pbs_status_reads_qstat_json():
    sys.path.insert(0, str(PBS))
    try:
        from status import state, traced_state
    finally:
        sys.path.remove(str(PBS))
    done = {"Jobs": {"7.pbs": {"job_state": "F", "Exit_status": 0}}}
    failed = {"Jobs": {"7.pbs": {"job_state": "F", "Exit_status": 271}}}
    queued = {"Jobs": {"7.pbs": {"job_state": "Q"}}}
    running = {"Jobs": {"7.pbs": {"job_state": "R"}}}
    assert [state(json.dumps(x), "7.pbs") for x in (done, failed, queued, running)] == [
        "success", "failed", "running", "running"]
    log = "11/23/2026 10:00:01  S    Exit_status=0 resources_used.cput=00:00:03\n"
    assert traced_state(log) == "success" and traced_state(log.replace("=0", "=271")) == "failed"
    assert traced_state("no records") is None


def _status_with(tmp_path, qstat: str, tracejob: str = "exit 1") -> str:
    """Run status.py with stand-ins for qstat and tracejob on PATH."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    for name, body in (("qstat", qstat), ("tracejob", tracejob)):
        (fake / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    res = subprocess.run([sys.executable, str(PBS / "status.py"), "7.pbs"], capture_output=True, text=True,
                         env=env)
    assert res.returncode == 0 and res.stdout.count("\n") == 1, res
    return res.stdout.strip()


def test_pbs_status_script_always_prints_one_state_and_exits_zero(tmp_path):
    done = json.dumps({"Jobs": {"7.pbs": {"job_state": "F", "Exit_status": 0}}})
    assert _status_with(tmp_path, f"echo '{done}'") == "success"
    unknown = "echo 'qstat: Unknown Job Id 7.pbs' >&2; exit 153"
    assert _status_with(tmp_path, unknown) == "failed"
    assert _status_with(tmp_path, unknown, "echo 'S Exit_status=0'") == "success"
    assert _status_with(tmp_path, "echo 'cannot connect to server' >&2; exit 1") == "running"
    assert _status_with(tmp_path, "echo 'not json'") == "running"


def test_profiles_name_their_executors():
    for name, executor in [("local", None), ("pbs", "cluster-generic"), ("slurm", "slurm")]:
        cfg = yaml.safe_load((REPO / "profiles" / name / "config.v8+.yaml").read_text())
        assert cfg.get("executor") == executor
