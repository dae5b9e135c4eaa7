"""A model folder that ships Python code (config.json's auto_map) never runs it: every
loader passes trust_remote_code=False, and lm_eval gets it only if the config asks."""

from __future__ import annotations

import json
import shutil

import pytest

from checkpoints import make_family
from otamerge.evaluation.builtin import load_model
from otamerge.evaluation.lm_eval import lm_eval_command
from otamerge.curvature.optimizer_state import parameter_names

EVIL = """import pathlib
pathlib.Path(__file__).with_name("PWNED").write_text("remote code ran")
from transformers import LlamaConfig, LlamaForCausalLM
class EvilConfig(LlamaConfig):
    model_type = "evil"
class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
"""


@pytest.fixture
def hostile(tmp_path):
    fam = make_family(tmp_path / "fam", n_experts=0, seed=2)
    folder = tmp_path / "hostile"
    shutil.copytree(fam["base"], folder)
    (folder / "evil.py").write_text(EVIL)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_a_known_architecture_loads_with_the_library_code_not_the_shipped_code(hostile):
    model, _ = load_model(hostile)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert parameter_names(hostile)[0] == "model.embed_tokens.weight"
    assert not (hostile / "PWNED").exists()


def test_an_architecture_only_the_shipped_code_knows_is_refused(hostile):
    cfg = json.loads((hostile / "config.json").read_text())
    cfg["model_type"] = "evil"
    (hostile / "config.json").write_text(json.dumps(cfg))
    for load in (load_model, parameter_names):
        with pytest.raises(ValueError, match="trust_remote_code"):
            load(hostile)
    assert not (hostile / "PWNED").exists()


def test_lm_eval_trusts_remote_code_only_when_the_config_says_so(tmp_path):
    default = lm_eval_command(tmp_path / "m", ["add"], tmp_path / "out")
    assert default[default.index("--model_args") + 1] == f"pretrained={tmp_path / 'm'}"
    asked = lm_eval_command(tmp_path / "m", ["add"], tmp_path / "out", model_args={"trust_remote_code": True})
    assert asked[asked.index("--model_args") + 1] == f"pretrained={tmp_path / 'm'},trust_remote_code=True"
