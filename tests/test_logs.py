"""A workflow script's body: logged, and the process ends as soon as it succeeds."""

import subprocess
import sys

SCRIPT = """
import sys
from otamerge.logs import job
with job(sys.argv[1]):
    print("the job's output")
    open(sys.argv[2], "w").write("written")
    if sys.argv[3] == "fail":
        raise ValueError("boom")
print("after the job")  # never runs: the process has ended
"""


def run(tmp_path, mode):
    return subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "job.log"), str(tmp_path / "out"), mode],
                          capture_output=True, text=True)


def test_a_job_that_succeeds_ends_the_process_with_its_output_and_log_written(tmp_path):
    res = run(tmp_path, "ok")
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    assert (tmp_path / "job.log").read_text() == "the job's output\n"
    assert (tmp_path / "out").read_text() == "written"


def test_a_job_that_fails_logs_the_traceback_and_exits_nonzero(tmp_path):
    res = run(tmp_path, "fail")
    assert res.returncode == 1 and "after the job" not in res.stdout
    log = (tmp_path / "job.log").read_text()
    assert log.startswith("the job's output\nTraceback") and log.endswith("ValueError: boom\n")
