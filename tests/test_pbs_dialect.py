"""pbs_dialect auto: which flavour profiles/pbs/dialect.py finds from the PBS client on PATH."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

PBS = REPO / "profiles/pbs"
ASK = "import dialect, json; print(json.dumps(dialect.detect())); print(dialect.resolve('auto'))"


def _client(tmp_path, qsub: str, qstat: str | None) -> dict:
    """A bin folder with these qsub and qstat scripts (qstat logs each call)."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "qsub").write_text(qsub)
    if qstat is not None:
        (bin_ / "qstat").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/qstat.calls\n{qstat}\n')
    for f in bin_.iterdir():
        f.chmod(0o755)
    return {**os.environ, "PYTHONPATH": str(PBS), "PATH": str(bin_)}  # nothing else on PATH: no system PBS client


def _ask(tmp_path, env) -> tuple[list, str]:
    res = subprocess.run([sys.executable, "-c", ASK], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    detected, resolved = res.stdout.splitlines()
    return json.loads(detected), resolved


TORQUE_QSTAT = 'case "$1" in --version) echo "Version: 6.1.3"; echo "Commit: 8a1d";; *) exit 1;; esac'
PRO_SERVER = 'case "$1" in -Bf) printf "Server: pbs01\\n    pbs_version = 2022.1.1\\n";; *) echo "qstat: invalid option -- \'-\'"; exit 2;; esac'


@pytest.mark.parametrize("qstat,dialect,why", [
    (None, "pro", "could not tell (qstat --version: 'no answer')"),  # no qstat at all: pro, and says so
    ('[ "$1" = --version ] && echo "pbs_version = 23.06.06"', "pro", "qstat --version: pbs_version = 23.06.06"),
    (TORQUE_QSTAT, "torque", "qstat --version: Version: 6.1.3 (Torque)"),
    (PRO_SERVER, "pro", "qstat -Bf: pbs_version = 2022.1.1"),
    ('[ "$1" = -Bf ] && echo "pbs_version = 4.2.10"', "torque", "qstat -Bf: pbs_version = 4.2.10"),
])
def test_the_flavour_from_what_qstat_answers(tmp_path, qstat, dialect, why):
    env = _client(tmp_path, "#!/bin/sh\necho 1.pbs\n", qstat)
    (got, reason), resolved = _ask(tmp_path, env)
    assert (got, resolved) == (dialect, dialect) and reason.startswith(why)
    # asked once: the answer is cached in the working directory with its evidence
    cached = json.loads((tmp_path / "logs/pbs/dialect.json").read_text())
    assert (cached["dialect"], cached["why"]) == (dialect, reason)
    calls = (tmp_path / "qstat.calls").read_text() if qstat else ""
    again = subprocess.run([sys.executable, "-c", "import dialect; print(dialect.resolve('auto'))"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert again.stdout == f"{dialect}\n" and again.stderr == ""  # from the cache, silently
    log = (tmp_path / "logs/pbs/submit.log").read_text()
    assert log.count("pbs_dialect auto:") == 1 and f"pbs_dialect auto: {dialect} ({reason})" in log
    if qstat:
        assert (tmp_path / "qstat.calls").read_text() == calls  # qstat not asked again


def test_a_qsub_that_calls_sbatch_is_slurm_wlm_torque(tmp_path):
    env = _client(tmp_path, "#!/usr/bin/perl -w\n# front end\nmy $sbatch = 'sbatch';\n", "exit 1")
    (got, reason), resolved = _ask(tmp_path, env)
    assert (got, resolved) == ("torque", "torque") and "calls sbatch (SLURM's slurm-wlm-torque)" in reason
    assert not (tmp_path / "qstat.calls").exists()  # the front end itself was enough


@pytest.mark.skipif(not (shutil.which("qsub") and "sbatch" in open(shutil.which("qsub"), errors="replace").read()),
                    reason="no slurm-wlm-torque installed here")
def test_debians_slurm_wlm_torque_is_torque(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PBS)}
    (got, _), resolved = _ask(tmp_path, env)
    assert (got, resolved) == ("torque", "torque")
