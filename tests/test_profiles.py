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
        from status import state
    finally:
        sys.path.remove(str(PBS))
    done = {"Jobs": {"7.pbs": {"job_state": "F", "Exit_status": 0}}}
    failed = {"Jobs": {"7.pbs": {"job_state": "F", "Exit_status": 271}}}
    queued = {"Jobs": {"7.pbs": {"job_state": "Q"}}}
    assert [state(json.dumps(x), "7.pbs") for x in (done, failed, queued)] == ["success", "failed", "running"]


def test_profiles_name_their_executors():
    for name, executor in [("local", None), ("pbs", "cluster-generic"), ("slurm", "slurm")]:
        cfg = yaml.safe_load((REPO / "profiles" / name / "config.v8+.yaml").read_text())
        assert cfg.get("executor") == executor
