"""kill -9 at seeded random moments during a merge, an FFG sweep and a moment
compression: while the job runs its output path is either absent or complete, and
rerunning the same command gives the bytes of an uninterrupted run."""

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from checkpoints import MOMENTS, make_family

# tiny row chunks stretch a run of these small models over a few seconds
CHUNK = ["--chunk-mb", "0.002"]
TRIALS = {"merge": 8, "ffg": 6, "compress": 6}  # 20 in all


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("fam"), n_experts=2, seed=3, hidden=64, layers=2)


def commands(family, out: Path) -> dict[str, tuple[list[str], Path]]:
    cfg = {"merge_method": "ota", "base_model": str(family["base"]), "dtype": "float32",
           "parameters": {"epsilon": 1e-26, "power": 0.5},
           "models": [{"model": str(family[e]), "parameters": {"preconditioner_path": MOMENTS}}
                      for e in ("expert0", "expert1")]}
    (out / "c.yml").write_text(yaml.safe_dump(cfg))
    cli = [sys.executable, "-m", "otamerge.cli"]
    return {
        "merge": ([*cli, "merge", "--quiet", *CHUNK, str(out / "c.yml"), str(out / "merged")], out / "merged"),
        "ffg": ([*cli, "ffg", str(out / "ffg"), "--quiet", *CHUNK, "--base", str(family["base"]),
                 "--expert", str(family["expert0"]), "--moments", str(family["expert0"] / MOMENTS),
                 "--density", "0.1", "0.5"],
                out / "ffg"),
        "compress": ([*cli, "compress-moments", "--quiet", str(family["expert0"] / MOMENTS),
                      str(out / "rank1.safetensors")], out / "rank1.safetensors"),
    }


def digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (or of the file itself)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def run_and_kill(cmd: list[str], out: Path, after: float, reference: dict[str, str]) -> int:
    """Start ``cmd``, watch ``out`` every millisecond, SIGKILL the process ``after``
    seconds in. Returns how many times the output was seen (always complete)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    seen, deadline = 0, time.monotonic() + after
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists():
            try:
                got = digest(out)
            except FileNotFoundError:  # replaced while being read: look again
                continue
            assert got == reference, f"{out} seen partial"
            seen += 1
        time.sleep(0.001)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return seen


@pytest.mark.parametrize("job", list(TRIALS))
def test_kill_9_then_rerun_gives_the_uninterrupted_bytes(family, tmp_path, job):
    ref_dir, work = tmp_path / "ref", tmp_path / "work"
    ref_dir.mkdir()
    work.mkdir()
    cmd, out = commands(family, ref_dir)[job]
    t = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True)
    full = time.monotonic() - t
    reference = digest(out)
    cmd, out = commands(family, work)[job]
    rng = random.Random(f"kill/{job}")
    killed_early = 0
    for _ in range(TRIALS[job]):
        after = rng.uniform(0.2, full)
        run_and_kill(cmd, out, after, reference)
        killed_early += not out.exists()
        res = subprocess.run(cmd, capture_output=True, text=True)  # the rerun completes
        assert res.returncode == 0, res.stderr[-2000:]
        assert digest(out) == reference
        leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        assert leftovers == [], leftovers  # a killed run's temporary output is cleared by the next
    print(f"{job}: uninterrupted {full:.2f} s, {killed_early} of {TRIALS[job]} kills before the output existed")


def test_a_second_snakemake_on_the_same_results_is_refused_by_the_lock(tmp_path):
    """While one run holds the working directory, a second one stops with Snakemake's
    lock message and touches nothing; the first finishes unharmed."""
    from conftest import REPO, tiny_config
    from workflow_utils import snakemake

    cfg = tiny_config()
    cfg["demo"]["threads"] = 1
    wf = tmp_path / "wf"
    wf.mkdir()
    (wf / "config.yaml").write_text(yaml.safe_dump(cfg))
    first = subprocess.Popen([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wf),
                              "--configfile", str(wf / "config.yaml"), "-j1", "resources/demo/experts/add"],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not any((wf / ".snakemake/locks").glob("*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first.poll() is None, "the first run ended before the test could race it"
        second = snakemake(wf, "-j1", "resources/demo/experts/rev", config=cfg)
        assert second.returncode != 0
        assert "Directory cannot be locked" in second.stderr
        assert not (wf / "resources/demo/experts/rev").exists()
    finally:
        assert first.wait(timeout=300) == 0
    assert (wf / "resources/demo/experts/add/model.safetensors").is_file()
