import json
import zlib

import pandas as pd
import pytest

from conftest import REPO, tiny_config
from workflow_utils import snakemake
from otamerge.errors import OtaMergeError
from otamerge.evaluation.olmes import evaluate, olmes_command, read_outputs

FAKE = str(REPO / "tests/fake_olmes/olmes")


def expected(task):  # the stand-in's fixed score of a task
    return (zlib.crc32(task.encode()) % 1000) / 1000


@pytest.fixture
def model(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def test_command_is_an_argument_list_with_prefix_and_settings():
    cmd = olmes_command("/m/merge", ["gsm8k::tulu", "ifeval::tulu"], "/o", prefix="conda run -n olmes",
                        model_type="vllm", model_args={"max_length": 4096, "dtype": "bfloat16"},
                        batch_size=8, gpus=1, limit=10)
    assert cmd == ["conda", "run", "-n", "olmes", "olmes", "--model", "/m/merge", "--task", "gsm8k::tulu",
                   "ifeval::tulu", "--output-dir", "/o", "--model-type", "vllm",
                   "--model-args", '{"dtype": "bfloat16", "max_length": 4096}', "--batch-size", "8",
                   "--gpus", "1", "--limit", "10"]
    assert olmes_command("m", ["t"], "o", executable="/opt/olmes; rm -rf ~")[0] == "/opt/olmes; rm -rf ~"


def test_scores_come_from_the_task_metrics_files_including_a_suite_alias(model, tmp_path, monkeypatch):
    log = tmp_path / "argv.jsonl"
    monkeypatch.setenv("FAKE_OLMES_LOG", str(log))
    rows = evaluate(model, "merge/ota_ffg", ["gsm8k::tulu", "mmlu:mc::tulu"], tmp_path / "out",
                    {"executable": FAKE, "limit": 5, "gpus": 1})
    suite = (expected("mmlu_abstract_algebra:mc::tulu") + expected("mmlu_anatomy:mc::tulu")) / 2
    assert rows == [
        {"model": "merge/ota_ffg", "task": "gsm8k::tulu", "metric": "primary_score",
         "score": expected("gsm8k::tulu"), "n": 5, "backend": "olmes"},
        {"model": "merge/ota_ffg", "task": "mmlu:mc::tulu", "metric": "primary_score",
         "score": pytest.approx(suite), "n": 10, "backend": "olmes"}]
    argv = json.loads(log.read_text())
    assert argv[argv.index("--limit") + 1] == "5" and argv[argv.index("--gpus") + 1] == "1"


def test_a_failing_task_is_a_clear_error(model, tmp_path):
    with pytest.raises(OtaMergeError, match=r"olmes exited with 1 for .*model: RuntimeError: task fail::x crashed"):
        evaluate(model, "base", ["gsm8k::tulu", "fail::x"], tmp_path / "out", {"executable": FAKE})


def test_a_missing_metrics_file_is_a_clear_error(model, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_OLMES_NO_SUMMARY", "1")
    with pytest.raises(OtaMergeError, match=r"metrics.json is missing: the run did not finish"):
        evaluate(model, "base", ["gsm8k::tulu"], tmp_path / "out", {"executable": FAKE})


def test_a_task_without_metrics_is_named(model, tmp_path):
    evaluate(model, "base", ["gsm8k::tulu"], tmp_path / "out", {"executable": FAKE})
    with pytest.raises(OtaMergeError, match=r"no metrics for task ifeval::tulu in .* \(found: gsm8k::tulu\)"):
        read_outputs(tmp_path / "out", "base", ["gsm8k::tulu", "ifeval::tulu"])


def test_a_missing_executable_says_which_setting_to_change(model, tmp_path):
    with pytest.raises(OtaMergeError, match=r"cannot run '/nonexistent/olmes'.*evaluation.olmes.executable"):
        evaluate(model, "base", ["gsm8k::tulu"], tmp_path / "out", {"executable": "/nonexistent/olmes"})


@pytest.mark.long
def test_workflow_scores_every_model_with_olmes(tmp_path):
    """The tiny demo through the olmes backend (the stand-in): base, experts, grafted
    experts at their fixed densities and merges, in one table."""
    cfg = tiny_config("olmes")
    cfg["demo"]["threads"] = 1
    cfg["evaluation"]["olmes"]["executable"] = FAKE  # the test runs in its own folder
    res = snakemake(tmp_path / "wf", "-j2", config=cfg)
    assert res.returncode == 0, res.stderr[-3000:]
    scores = pd.read_csv(tmp_path / "wf/results/summary/scores.csv")
    assert list(dict.fromkeys(scores.model)) == [
        "base", "add", "rev", "ffg/add/fisher/0.5", "ffg/rev/fisher/0.1", "merge/ota_ffg", "merge/ties"]
    gsm = scores[scores.task == "gsm8k::tulu"]
    assert set(gsm.score) == {expected("gsm8k::tulu")} and set(gsm.n) == {3} and set(gsm.backend) == {"olmes"}
    table = (tmp_path / "wf/results/summary/accuracy.md").read_text()
    assert "## primary_score (olmes)" in table and "mmlu:mc::tulu" in table
    assert list((tmp_path / "wf/results/seed0/evaluation/olmes_raw/merge/ties").glob("task-*-metrics.json"))
