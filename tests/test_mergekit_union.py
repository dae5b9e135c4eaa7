"""``tokenizer_source: union`` over different vocabularies, against PyPI mergekit==0.1.5.

A tiny family whose experts added tokens (embed_tokens and lm_head resized) or hold their
vocabulary in another order; mergekit-yaml and we merge it with linear (no base: the
tokenizer base is a model) and ties (a base that lacks the added tokens); and one
vocabulary whose files differ (expert0: a chat template, pad = eos). mergekit
without a base takes an arbitrary model's tokenizer as its base (its model set's order),
so the experts add their tokens in one relative order: every choice then gives the same
union.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from transformers import AutoTokenizer

from checkpoints import add_tokens, make_family, swap_tokens
from conftest import REPO
from otamerge.config import parse_config
from otamerge.merge import MergeOptions, run_merge
from test_mergekit_agreement import DRIVER, ulps

MERGEKIT = Path(os.environ.get("MERGEKIT_YAML", REPO / ".venv-mergekit/bin/mergekit-yaml"))
if not MERGEKIT.is_file():
    if os.environ.get("OTAMERGE_REQUIRE_MERGEKIT"):
        raise RuntimeError(f"mergekit-yaml not found at {MERGEKIT}")
    pytest.skip("mergekit 0.1.5 not installed (make test installs it)", allow_module_level=True)

VOCAB = ("model.embed_tokens.weight", "lm_head.weight")


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict[str, Path]:
    """expert1 adds <tool> and <extra>, expert2 adds <tool>; expert3 is expert2 with the
    ids of 'a' and 'b' exchanged (the same model, its vocabulary in another order)."""
    fam = make_family(tmp_path_factory.mktemp("vocab"), n_experts=3, seed=3)
    add_tokens(fam["expert1"], ["<tool>", "<extra>"], seed=1)
    add_tokens(fam["expert2"], ["<tool>"], seed=2)
    fam["expert3"] = fam["base"].parent / "expert3"
    shutil.copytree(fam["expert2"], fam["expert3"])
    swap_tokens(fam["expert3"], "a", "b")
    tok = AutoTokenizer.from_pretrained(fam["expert0"])  # a chat fine-tune's files, one vocabulary
    tok.pad_token = tok.eos_token
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(fam["expert0"])
    return fam


def _configs(fam) -> dict[str, dict]:
    def models(names, weights):
        return [{"model": str(fam[n]), "parameters": {"weight": w}} for n, w in zip(names, weights)]

    common = {"dtype": "float32", "tokenizer_source": "union"}
    return {
        "linear": {"merge_method": "linear", "models": models(["expert0", "expert1", "expert2"], (0.5, 0.3, 0.7)),
                   **common},
        "ties": {"merge_method": "ties", "base_model": str(fam["base"]),
                 "models": models(["expert0", "expert1", "expert3"], (0.5, 0.3, 0.7)), **common},
        "one-vocabulary": {"merge_method": "task_arithmetic", "base_model": str(fam["base"]),
                           "models": models(["expert0"], (0.5,)), **common},
    }


@pytest.fixture(scope="module")
def mergekit(family, tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    """Each config merged by mergekit-yaml 0.1.5 (one process): key -> (config, output)."""
    root = tmp_path_factory.mktemp("mergekit")
    args, cfgs = [], _configs(family)
    for key, cfg in cfgs.items():
        (root / f"{key}.yml").write_text(yaml.safe_dump(cfg))
        args += [str(root / f"{key}.yml"), str(root / key)]
    res = subprocess.run([str(MERGEKIT.parent / "python"), "-c", DRIVER, *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": "0"})
    assert res.returncode == 0, res.stderr[-2000:]
    return {key: (cfg, root / key) for key, cfg in cfgs.items()}


def _vocab(folder: Path) -> dict[str, int]:
    tj = json.loads((folder / "tokenizer.json").read_text())
    return {**tj["model"]["vocab"], **{t["content"]: t["id"] for t in tj["added_tokens"]}}


@pytest.mark.parametrize("key", ["linear", "ties"])
def test_union_vocabulary_and_rows_equal_mergekits(mergekit, tmp_path, key):
    cfg, theirs_dir = mergekit[key]
    ours_dir = run_merge(parse_config(cfg), tmp_path / "ours", MergeOptions(progress=False))
    assert _vocab(ours_dir) == _vocab(theirs_dir)
    assert _vocab(ours_dir)["<tool>"] == 77 and _vocab(ours_dir)["<extra>"] == 78
    ours, theirs = load_file(ours_dir / "model.safetensors"), load_file(theirs_dir / "model.safetensors")
    assert set(ours) == set(theirs) and all(ours[n].shape == theirs[n].shape for n in ours)
    assert ours[VOCAB[0]].shape[0] == 79
    worst = max(float(ulps(ours[n], theirs[n]).max()) for n in ours)
    diff = max(float((ours[n].double() - theirs[n].double()).abs().max()) for n in VOCAB)
    print(f"union {key}: embed/lm_head max abs diff {diff:.3g}; all tensors max {worst:.2f} ulp")
    assert worst <= 1.0
    for f in (ours_dir, theirs_dir):
        assert json.loads((f / "config.json").read_text())["vocab_size"] == 79


def test_one_vocabulary_merges_as_mergekit_does_with_the_bases_tokenizer(mergekit, tmp_path):
    cfg, theirs_dir = mergekit["one-vocabulary"]
    ours_dir = run_merge(parse_config(cfg), tmp_path / "ours", MergeOptions(progress=False))
    assert _vocab(ours_dir) == _vocab(theirs_dir)
    ours, theirs = load_file(ours_dir / "model.safetensors"), load_file(theirs_dir / "model.safetensors")
    assert max(float(ulps(ours[n], theirs[n]).max()) for n in ours) <= 1.0
    for folder in (ours_dir, theirs_dir):  # both: the base's tokenizer, not expert0's chat settings
        tok = AutoTokenizer.from_pretrained(folder)
        assert (tok.pad_token, tok.chat_template) == ("<pad>", None)
