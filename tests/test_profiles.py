import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, tiny_config
from workflow_utils import snakemake

PBS = REPO / "profiles/pbs"


def _jobscript(tmp_path, props):
    js = tmp_path / "snakejob.sh"
    js.write_text(f"#!/bin/sh\n# properties = {json.dumps(props)}\necho hi\n")
    return js


def _submit(tmp_path, props) -> subprocess.CompletedProcess:
    """Run submit.py on a jobscript with ``props``, with a qsub stand-in that records its
    arguments."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "qsub").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$QSUB_ARGS"\necho 123.pbs\n')
    (fake / "qsub").chmod(0o755)
    js = _jobscript(tmp_path, props)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "QSUB_ARGS": str(tmp_path / "args")}
    return subprocess.run([sys.executable, str(PBS / "submit.py"), str(js)], capture_output=True,
                          text=True, env=env, cwd=tmp_path)


def test_pbs_submit_requests_cpus_memory_walltime_and_gpus(tmp_path):
    res = _submit(tmp_path, {"rule": "merge; rm -rf $(x)", "threads": 4, "wildcards": {"merge": "a b'\"c"},
                             "resources": {"mem_mb": 32000, "runtime": 90, "gpu": 1,
                                           "pbs_queue": "gpu-q", "pbs_account": ""}})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "123.pbs"
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:-1] == [
        "-N", "smk-merge__rm_-rf___x_-a_b__c", "-l", "select=1:ncpus=4:mem=32000mb:ngpus=1",
        "-l", "walltime=01:30:00", "-S", "/bin/sh", "-j", "oe", "-o", "logs/pbs", "-q", "gpu-q"]
    # the script submitted is the wrapper that runs the jobscript and records its exit status
    assert re.fullmatch(r"logs/pbs/jobs/smk-merge__rm_-rf___x_-a_b__c\.[0-9a-f]{10}\.sh", args[-1])
    assert shlex.quote(str(tmp_path / "snakejob.sh")) in (tmp_path / args[-1]).read_text()
    record = json.loads((tmp_path / "logs/pbs/jobs/id-123.pbs.json").read_text())
    assert record["exit_record"] == str(tmp_path / args[-1]).replace(".sh", ".exit")
    assert (record["dialect"], record["state_timeout"]) == ("pro", 180)


def test_pbs_submit_torque_dialect_and_refused_values(tmp_path):
    res = _submit(tmp_path, {"rule": "ffg", "threads": 2, "wildcards": {},
                             "resources": {"mem_mb": 4000, "runtime": 20, "gpu": 1, "pbs_dialect": "torque",
                                           "pbs_state_timeout": 60, "pbs_account": "proj.1"}})
    assert res.returncode == 0, res.stderr
    args = (tmp_path / "args").read_text().splitlines()
    token = args[-1][len("logs/pbs/jobs/"):-len(".sh")]
    assert args[:-1] == ["-N", "smk-ffg", "-l", "nodes=1:ppn=2:gpus=1,mem=4000mb,walltime=00:20:00",
                         "-S", "/bin/sh", "-j", "oe", "-o", f"logs/pbs/jobs/{token}.log", "-A", "proj.1"]
    assert json.loads((tmp_path / "logs/pbs/jobs/id-123.pbs.json").read_text())["state_timeout"] == 60
    # a queue some qsub front ends would hand to a shell, an unknown dialect: refused, nothing submitted
    for bad, message in (({"pbs_queue": "gpu;reboot"}, "pbs_queue 'gpu;reboot' has characters"),
                         ({"pbs_dialect": "lsf"}, "pbs_dialect must be one of auto, pro, torque, not 'lsf'")):
        (tmp_path / "args").unlink(missing_ok=True)
        res = _submit(tmp_path, {"rule": "ffg", "resources": {"mem_mb": 1000, **bad}})
        assert res.returncode != 0 and message in res.stderr
        assert not (tmp_path / "args").exists()


def test_profiles_name_executors_that_are_installed():
    for name in ("local", "pbs", "slurm"):
        executor = yaml.safe_load((REPO / "profiles" / name / "config.v8+.yaml").read_text()).get("executor")
        if executor:  # a plugin the profile needs is a dependency of the workflow extra
            assert importlib.util.find_spec(f"snakemake_executor_plugin_{executor.replace('-', '_')}"), executor


def _pbs_requests(state) -> dict[str, list[dict]]:
    """What the fake qsub recorded, per rule, in submission order."""
    out: dict[str, list[dict]] = {}
    for f in sorted(state.glob("*.json"), key=lambda p: int(p.name.split(".")[0])):
        req = json.loads(f.read_text())
        out.setdefault(req["N"].split("-")[1], []).append(req)
    return out


@pytest.mark.long
def test_pbs_profile_runs_jobs_of_every_kind_against_a_pbs_stand_in(tmp_path):
    """Jobs of the tiny demo (training, FFG, merge, evaluation) go through submit.py ->
    qsub -> status.py -> qstat, with one GPU asked for by the GPU rules; the first merge
    job 'fails' (exit 271) and is retried with twice the memory and walltime."""
    cfg = tiny_config("cluster")
    state = tmp_path / "pbs"
    env = {**os.environ, "PATH": f"{REPO / 'tests/fake_pbs'}:{os.environ['PATH']}",
           "FAKE_PBS_DIR": str(state), "FAKE_PBS_FAIL_ONCE": "smk-merge-"}
    targets = ["results/seed0/evaluation/builtin/merge/ties.json", "results/seed0/evaluation/builtin/ffg/add/fisher/0.1.json"]
    res = snakemake(tmp_path / "wf", "--profile", str(PBS), "--jobs", "4", *targets, "--latency-wait", "5",
                    "--seconds-between-status-checks", "1", "--max-status-checks-per-second", "20",
                    "--default-resources", "mem_mb=4000", "runtime=60", "pbs_queue=gpuq", "pbs_account=proj1",
                    config=cfg, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "wf/results/seed0/merges/ties/model/model.safetensors").stat().st_size > 0
    reqs = _pbs_requests(state)
    # every job these targets need was submitted (the retried merge twice); merge_config
    # is a local rule
    assert {r: len(v) for r, v in reqs.items()} == {
        "demo_base": 1, "demo_expert": 2, "ffg": 1, "evaluate_builtin": 2, "merge": 2}
    # GPU rule: 2B parameters -> mem 4000 + 2500 x 2 MB, runtime 10 + 10 x 2 min
    first, retry = reqs["merge"]
    assert first["N"] == retry["N"] == "smk-merge-0-ties"  # rule, then the wildcards: seed, merge
    assert first["select"] == ["select=1:ncpus=1:mem=9000mb:ngpus=1"] and first["walltime"] == "00:30:00"
    assert retry["select"] == ["select=1:ncpus=1:mem=18000mb:ngpus=1"] and retry["walltime"] == "01:00:00"
    assert reqs["ffg"][0]["select"] == ["select=1:ncpus=1:mem=4000mb:ngpus=1"]
    # CPU rule: no GPU
    assert reqs["demo_expert"][0]["select"] == ["select=1:ncpus=1:mem=2000mb"]
    assert reqs["demo_expert"][0]["walltime"] == "00:30:00"
    assert all(r["q"] == "gpuq" and r["A"] == "proj1" and r["o"] == "logs/pbs" for v in reqs.values() for r in v)
    assert reqs["ffg"][0]["N"] == "smk-ffg-0-add-fisher-0_1"
    assert list((tmp_path / "wf/logs/pbs").glob("*.fakepbs.log"))
    # no pbs_dialect given: auto asked the stand-in once and chose pro
    chosen = json.loads((tmp_path / "wf/logs/pbs/dialect.json").read_text())
    assert (chosen["dialect"], chosen["why"]) == ("pro", "qstat --version: pbs_version = 23.06.06 (PBS Professional / OpenPBS)")
    assert (tmp_path / "wf/logs/pbs/submit.log").read_text().count("pbs_dialect auto: pro") == 1
