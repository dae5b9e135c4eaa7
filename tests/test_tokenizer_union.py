"""``tokenizer_source: union`` on what fine-tuning frameworks save: tokenizer files that
differ over one vocabulary, vocabularies that differ (added tokens, resized embeddings),
and the inputs a union cannot be built from (one line, nothing written)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoTokenizer

from checkpoints import MOMENTS, add_tokens, make_family, swap_tokens
from otamerge.cli import main
from otamerge.config import parse_config
from otamerge.merge import MergeOptions, run_merge
from otamerge.io.tokenizer_source import TOKENIZER_FILES

QUIET = MergeOptions(progress=False)
WEIGHTS = (0.5, 0.3, 0.7)


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    """expert1 saved by a chat fine-tune: a chat template, pad token = eos (as TRL sets
    it), a sampling temperature; expert2 added <tool> (rows resized); expert3: expert0 with 'a' and 'b' exchanged."""
    fam = make_family(tmp_path_factory.mktemp("fam"), n_experts=3, seed=7)
    tok = AutoTokenizer.from_pretrained(fam["expert1"])
    tok.pad_token = tok.eos_token
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(fam["expert1"])
    gen = json.loads((fam["expert1"] / "generation_config.json").read_text())
    (fam["expert1"] / "generation_config.json").write_text(json.dumps({**gen, "temperature": 0.6}))
    fam["expert3"] = fam["base"].parent / "expert3"
    shutil.copytree(fam["expert0"], fam["expert3"])
    swap_tokens(fam["expert3"], "a", "b")
    add_tokens(fam["expert2"], ["<tool>"], seed=4)
    return fam


def cfg_of(fam, experts, method="linear", base=False, **extra):
    models = [{"model": str(fam[e]), "parameters": {"weight": w}} for e, w in zip(experts, WEIGHTS)]
    cfg = {"merge_method": method, "models": models, "dtype": "float32", "tokenizer_source": "union", **extra}
    if base:
        cfg["base_model"] = str(fam["base"])
    return cfg


@pytest.mark.parametrize("base", [True, False])
def test_one_vocabulary_with_other_files_merges_and_gets_the_tokenizer_bases_files(fam, tmp_path, capsys, base):
    cfg = cfg_of(fam, ["expert0", "expert1"], method="task_arithmetic" if base else "linear", base=base)
    out = run_merge(parse_config(cfg), tmp_path / "u", QUIET)
    src = fam["base"] if base else fam["expert0"]  # the base, else the first model
    assert sorted(p.name for p in out.iterdir() if p.name in TOKENIZER_FILES) == \
        ["tokenizer.json", "tokenizer_config.json"]
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / f).read_bytes() == (src / f).read_bytes()
    log = capsys.readouterr().out
    assert f"model {fam['expert1']} (chat_template.jinja, generation_config.json, tokenizer_config.json)" in log
    cfg["tokenizer_source"] = "base"  # the weights are those of any other tokenizer choice
    ref = run_merge(parse_config(cfg), tmp_path / "b", QUIET)
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()


def test_different_vocabularies_are_reindexed_and_missing_rows_filled(fam, tmp_path):
    cfg = cfg_of(fam, ["expert0", "expert3", "expert2"])
    out = run_merge(parse_config(cfg), tmp_path / "u", QUIET)
    # row chunks of 4 rows: the re-indexed reads cross chunk boundaries, same bytes
    chunked = run_merge(parse_config(cfg), tmp_path / "c", MergeOptions(progress=False, chunk_bytes=256))
    assert (chunked / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    vocab = AutoTokenizer.from_pretrained(out).get_vocab()
    base_vocab = AutoTokenizer.from_pretrained(fam["expert0"]).get_vocab()
    assert vocab == {**base_vocab, "<tool>": 77}
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 78
    merged = load_file(out / "model.safetensors")
    e0, e3, e2 = (load_file(fam[e] / "model.safetensors") for e in ("expert0", "expert3", "expert2"))
    a, b, tool = vocab["a"], vocab["b"], vocab["<tool>"]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert merged[name].shape == (78, 16)
        # expert3 holds 'a' in row b; expert0 and expert3 lack <tool>: expert2's row, as the only holder
        want_a = (0.5 * e0[name][a] + 0.3 * e3[name][b] + 0.7 * e2[name][a]) / 1.5
        assert torch.allclose(merged[name][a], want_a, rtol=0, atol=4e-9)
        assert torch.allclose(merged[name][tool], e2[name][tool], rtol=0, atol=4e-9)


def _refused(fam, tmp_path, capsys, cfg, message):
    (tmp_path / "c.yml").write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(tmp_path / "c.yml"), str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("otamerge: error: ") and message in err, err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def _copy(fam, tmp_path, expert):
    bad = tmp_path / "bad"
    shutil.copytree(fam[expert], bad)
    return bad


def test_a_model_without_tokenizer_is_refused(fam, tmp_path, capsys):
    bad = _copy(fam, tmp_path, "expert0")
    for f in TOKENIZER_FILES:
        (bad / f).unlink(missing_ok=True)
    cfg = cfg_of(fam, ["expert1", "expert2"])
    cfg["models"][1]["model"] = str(bad)
    _refused(fam, tmp_path, capsys, cfg, f"tokenizer_source union: model {bad} has no tokenizer files in {bad}")


def test_a_token_without_an_embedding_row_is_refused(fam, tmp_path, capsys):
    bad = _copy(fam, tmp_path, "expert0")
    tj = json.loads((bad / "tokenizer.json").read_text())
    tj["model"]["vocab"]["<extra>"] = 77  # added to the tokenizer, embeddings not resized
    (bad / "tokenizer.json").write_text(json.dumps(tj))
    cfg = cfg_of(fam, ["expert1", "expert0"])
    cfg["models"][1]["model"] = str(bad)
    _refused(fam, tmp_path, capsys, cfg, f"model {bad}'s tokenizer has token '<extra>' with id 77 "
                                         "but its vocabulary tensors have only 77 rows")


def test_an_unreadable_tokenizer_is_refused(fam, tmp_path, capsys):
    bad = _copy(fam, tmp_path, "expert0")
    (bad / "tokenizer.json").write_text('{"model": ')
    cfg = cfg_of(fam, ["expert1", "expert0"])
    cfg["models"][1]["model"] = str(bad)
    _refused(fam, tmp_path, capsys, cfg, f"model {bad}: cannot load the tokenizer in {bad} (")


def test_moments_over_different_vocabularies_are_refused(fam, tmp_path, capsys):
    cfg = {"merge_method": "ota", "base_model": str(fam["base"]), "tokenizer_source": "union",
           "parameters": {"epsilon": "1e-26"},
           "models": [{"model": str(fam[e]), "parameters": {"preconditioner_path": str(fam[e] / MOMENTS)}}
                      for e in ("expert0", "expert2")]}
    _refused(fam, tmp_path, capsys, cfg, "re-indexing per-model moments into a union vocabulary is not supported")


def test_a_union_without_ids_0_to_n_is_refused(fam, tmp_path, capsys):
    bad = _copy(fam, tmp_path, "expert0")
    tj = json.loads((bad / "tokenizer.json").read_text())
    # the tokenizer base's ids skip Z's; mergekit then gives the Z it adds back the id of '-'
    del tj["model"]["vocab"]["Z"]
    (bad / "tokenizer.json").write_text(json.dumps(tj))
    cfg = cfg_of(fam, ["expert0", "expert2"])
    cfg["models"][0]["model"] = str(bad)
    _refused(fam, tmp_path, capsys, cfg, "the union vocabulary's 78 tokens do not have the ids 0..77")


def test_a_corrupt_tokenizer_json_shared_by_all_models_is_refused(fam, tmp_path, capsys):
    bad = [_copy(fam, tmp_path, "expert0"), tmp_path / "bad1"]
    shutil.copytree(fam["expert3"], bad[1])
    for b in bad:  # byte-identical files skip transformers; the row check still reads them
        (b / "tokenizer.json").write_text('{"model": 3}')
    cfg = cfg_of(fam, ["expert0", "expert3"])
    for m, b in zip(cfg["models"], bad):
        m["model"] = str(b)
    _refused(fam, tmp_path, capsys, cfg, f"{bad[0]}/tokenizer.json is not a valid tokenizer.json (AttributeError")
