"""benchmarks/gpu_check.py's CPU half on a small family: every step runs, CPU against CPU
differs by nothing (the same code on the same device gives the same bits)."""

import subprocess
import sys

from conftest import REPO


def test_gpu_check_cpu_half_runs_every_step_and_cpu_equals_cpu(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_check.py"), str(tmp_path / "out"),
                          "--params", "3e6", "--devices", "cpu", "cpu", "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    table = [line for line in res.stdout.splitlines() if line.startswith("| ") and "| difference |" in line]
    steps = [line.split(" | ")[0][2:] for line in table]
    assert steps == ["ffg sweep (3 densities, 1 expert)", "ffg thresholds (density 0.1, every expert)", "ota_ffg",
                     "ota_ffg_rank1", "ties", "linear", "empirical fisher (1 expert, 8 x 128 tokens)"]
    assert all(line.split(" | ")[2] == "0.0" for line in table), table
    assert not (tmp_path / "out").exists()  # removed once compared
