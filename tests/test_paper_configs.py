"""Every merge config of the paper's repository (pmahdavi/ota-merge, configs/ and configs/FFG/,
21 files) runs unchanged but for model locations: tests/paper_configs/ holds their values with
hub ids and cluster paths mapped onto a tiny bf16 family (FAMILY/base, FAMILY/expert<i>)."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from checkpoints import MOMENTS, make_family
from otamerge.io.checkpoint import Checkpoint
from otamerge.errors import OtaMergeError
from otamerge.ffg.graft import FfgOptions, ffg_sweep
from otamerge.merge import MergeOptions, merge_file

CONFIGS = sorted((Path(__file__).parent / "paper_configs").glob("*.yml"))
QUIET = MergeOptions(progress=False)


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("paperfam"), n_experts=6, seed=5, dtype=torch.bfloat16)


def _config(fam, src: Path, tmp_path: Path, **override) -> Path:
    family = str(fam["base"].parent)
    raw = yaml.safe_load(src.read_text().replace("FAMILY", family)) | yaml.safe_load(
        yaml.safe_dump(override).replace("FAMILY", family))
    out = tmp_path / src.name
    out.write_text(yaml.safe_dump(raw))
    return out


def test_all_21_paper_configs_are_here():
    assert len(CONFIGS) == 21


@pytest.mark.parametrize("src", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_paper_config_writes_a_model(fam, tmp_path, src):
    out = merge_file(_config(fam, src, tmp_path), tmp_path / "out", QUIET)
    base = Checkpoint(fam["base"])
    merged = Checkpoint(out)
    assert merged.names() == base.names()
    assert all(merged.shape(n) == base.shape(n) and merged.dtype(n) == torch.bfloat16 for n in base.names())
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    if yaml.safe_load(src.read_text())["merge_method"] == "ffg":
        stats = json.loads((out / "statistics.json").read_text())
        assert stats["density"] == pytest.approx(0.3)
        assert stats["metric"] in ("fisher", "magnitude")


def test_ffg_config_is_the_graft_otamerge_ffg_writes(fam, tmp_path):
    src = next(c for c in CONFIGS if c.name == "FFG__ffg_fisher_coding.yml")
    out = merge_file(_config(fam, src, tmp_path), tmp_path / "cfg", QUIET)
    ref = ffg_sweep(fam["base"], fam["expert5"], fam["expert5"] / MOMENTS, [0.3], "fisher", tmp_path / "cli",
                    FfgOptions(progress=False))[0.3]
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    ours, theirs = (json.loads((f / "statistics.json").read_text()) for f in (out, ref))
    assert {k: v for k, v in ours.items() if k != "moments_info"} == {
        k: v for k, v in theirs.items() if k != "moments_info"}
    kept = load_file(str(out / "model.safetensors"))["model.embed_tokens.weight"]
    assert 0 < int((kept != load_file(str(fam["base"] / "model.safetensors"))["model.embed_tokens.weight"]).sum())


@pytest.mark.parametrize("bad, message", [
    ({"parameters": {"metric": "fisher"}}, "ffg needs parameter 'density'"),
    ({"parameters": {"density": 0.3, "gamma": 1}}, r"unknown parameter 'gamma' for merge_method ffg \(known: density, metric"),
    ({"parameters": {"density": 1.5}}, "outside"),
    ({"parameters": {"density": 0.3, "metric": "taylor"}}, "metric='taylor' is not one of fisher, magnitude, sparsegpt"),
    ({"models": [{"model": "FAMILY/expert0"}, {"model": "FAMILY/expert1"}]}, "grafts one expert; models lists 2"),
    ({"parameters": {"density": [0.1, 0.3]}}, "grafts at one density: its parameters take single values"),
])
def test_ffg_config_refuses_bad_values_and_writes_nothing(fam, tmp_path, bad, message):
    src = next(c for c in CONFIGS if c.name == "FFG__ffg_fisher_coding.yml")
    with pytest.raises(OtaMergeError, match=message):
        merge_file(_config(fam, src, tmp_path, **bad), tmp_path / "out", QUIET)
    assert not (tmp_path / "out").exists()
