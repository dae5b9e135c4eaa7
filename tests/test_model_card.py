"""Model cards of merged models and publishing them, against the hub stand-in on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from huggingface_hub import ModelCard

from checkpoints import make_family
from hub_server import HubServer, commit_sha, point_client_at
from otamerge.cli import main
from otamerge.io import download as dl

REPO = "lab/expert-math"


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("fam"), n_experts=2, seed=5)


@pytest.fixture
def hub(family, tmp_path, monkeypatch):
    root = tmp_path / "hubroot"
    shutil.copytree(family["expert0"], root / REPO / "main")
    with HubServer(root) as server:
        point_client_at(monkeypatch, server.url, tmp_path / "hfhome")
        yield server


def _merge(tmp_path, family, math_folder, method="ties") -> tuple:
    cfg = {"merge_method": method, "base_model": str(family["base"]), "dtype": "float32",
           "models": [{"model": str(math_folder), "parameters": {"weight": 1.0, "density": 0.5}},
                      {"model": str(family["expert1"]), "parameters": {"weight": 1.0, "density": 0.3}}]}
    path = tmp_path / "merge.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["merge", str(path), str(tmp_path / "merged"), "--quiet"]) == 0
    return tmp_path / "merged", cfg


def test_every_merge_writes_a_card_the_hub_parser_reads(hub, family, tmp_path):
    math = dl.download(dl.Source("math", REPO, "main", "export/exp_avg_sq.safetensors"), tmp_path / "math")
    merged, cfg = _merge(tmp_path, family, math)
    card = ModelCard.load(merged / "README.md")
    assert card.data.base_model == [REPO]  # the hub model; local folders are no hub ids
    assert card.data.base_model_relation == "merge"
    assert card.data.library_name == "transformers" and card.data.tags == ["merge", "otamerge", "ties"]
    text = card.text
    # each model with its source, revision and commit; its parameters from the config
    assert f"| model | {REPO} | main | {commit_sha(REPO, 'main')} | weight: 1.0, density: 0.5 |" in text
    assert f"| base | {family['base']} |  |  |  |" in text
    assert yaml.safe_load(text.split("```yaml\n")[1].split("```")[0]) == cfg


def test_the_card_command_adds_ffg_choices_and_scores(family, tmp_path):
    merged, _ = _merge(tmp_path, family, family["expert0"])
    choices = tmp_path / "thresholds.csv"
    choices.write_text("expert,mode,density,threshold,achieved_density,metric,score,expert_score,reason\n"
                       "math,auto,0.05,1.5e-07,0.05,token_accuracy,0.91,0.95,smallest density keeping 0.95\n")
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps([{"model": "merge/ties", "task": "add", "metric": "exact_match", "score": 0.825,
                                   "n": 40, "backend": "builtin"}]))
    out = tmp_path / "card.md"
    assert main(["card", str(merged), "--out", str(out), "--thresholds", str(choices), "--scores", str(scores),
                 "--title", "ties of math and code"]) == 0
    text = out.read_text()
    assert "# ties of math and code" in text
    assert "| math | auto | 0.05 | 1.5e-07 | smallest density keeping 0.95 |" in text
    assert "| builtin | add | exact_match | 0.8250 | 40 |" in text
    assert ModelCard.load(out).data.library_name == "transformers"


def test_push_commits_the_folder_and_its_card_and_it_downloads_back(hub, family, tmp_path, capsys):
    merged, _ = _merge(tmp_path, family, family["expert0"])
    card = tmp_path / "card.md"
    card.write_text(ModelCard.load(merged / "README.md").content.replace("# A merge", "# Published: a merge"))
    receipt = tmp_path / "pushed.json"
    assert main(["push", str(merged), "lab/merged", "--card", str(card), "--out", str(receipt)]) == 0
    done = json.loads(receipt.read_text())
    assert done["repo_id"] == "lab/merged" and done["commit"] == commit_sha("lab/merged", "main")
    assert sorted(done["files"]) == sorted(p.name for p in merged.iterdir())
    served = hub.root / "lab/merged/main"
    for p in merged.iterdir():
        assert (served / p.name).read_bytes() == (card if p.name == "README.md" else p).read_bytes(), p.name
    back = dl.download(dl.Source("merged", "lab/merged", "main"), tmp_path / "back")  # our own download stage
    assert (back / "model.safetensors").read_bytes() == (merged / "model.safetensors").read_bytes()
    # pushing again is a new commit to the same repo, not an error
    assert main(["push", str(merged), "lab/merged"]) == 0
    assert (served / "README.md").read_bytes() == (merged / "README.md").read_bytes()


def test_push_of_a_folder_without_config_is_a_one_line_error(hub, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["push", str(tmp_path / "empty"), "lab/x"]) == 1
    assert "not a model folder (no config.json)" in capsys.readouterr().err


def test_a_card_the_hub_refuses_is_a_one_line_error_and_nothing_is_committed(hub, family, tmp_path, capsys):
    merged, _ = _merge(tmp_path, family, family["expert0"])
    card = tmp_path / "card.md"
    card.write_text("---\nbase_model: /home/me/expert\n---\n\n# bad\n")
    assert main(["push", str(merged), "lab/bad", "--card", str(card)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Invalid metadata in README.md" in err and "base_model" in err
    assert list((hub.root / "lab/bad/main").iterdir()) == []


def test_the_card_names_the_models_as_the_parsed_config_does(family, tmp_path):
    """base_model as a mapping ({model: ...}, which mergekit accepts) and the base listed among
    the models: the card lists the base once, and the other models."""
    cfg = {"merge_method": "task_arithmetic", "base_model": {"model": str(family["base"])}, "dtype": "float32",
           "models": [{"model": str(family["base"])}, {"model": str(family["expert1"]), "parameters": {"weight": 1.0}}]}
    path = tmp_path / "merge.yml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(path), str(tmp_path / "merged"), "--quiet"]) == 0
    text = (tmp_path / "merged/README.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| base |") or line.startswith("| model |")]
    assert table == [f"| base | {family['base']} |  |  |  |", f"| model | {family['expert1']} |  |  | weight: 1.0 |"]


def test_a_card_job_never_loads_torch(family, tmp_path):
    """A merge config without dtype (the demo's 24 cards) is read and its card written in a
    process that never imports torch (1-2 s and 200 MB of a job that needs none of it)."""
    model = tmp_path / "merged"
    model.mkdir()
    (model / "merge_config.yml").write_text(yaml.safe_dump(
        {"merge_method": "linear", "models": [{"model": str(family[f"expert{i}"]), "parameters": {"weight": 0.5}}
                                              for i in range(2)]}))
    code = ("import sys; from otamerge.card import write_card; write_card(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'numba')))")
    out = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert f"| model | {family['expert1']} |" in (model / "README.md").read_text()
