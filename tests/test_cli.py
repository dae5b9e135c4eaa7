import json
import subprocess
import sys

from otamerge.cli import main


def test_evaluate_writes_tidy_rows(tiny_demo, tmp_path):
    out = tmp_path / "scores.json"
    assert main(["evaluate", str(tiny_demo / "experts/add"), "--tasks", "add", "facts",
                 "--n", "10", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["model"], r["task"], r["metric"], r["n"]) for r in rows] == [
        ("add", "add", "exact_match", 10), ("add", "add", "token_accuracy", 10),
        ("add", "facts", "exact_match", 50), ("add", "facts", "token_accuracy", 50)]
    assert all(r["backend"] == "builtin" and 0 <= r["score"] <= 1 for r in rows)


def test_errors_are_one_line_without_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "otamerge.cli", "evaluate", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr == f"otamerge: error: {tmp_path}: not a model folder (no config.json)\n"
