"""Several merges in one file (mergekit-multi's format): which folder each merge reads and
writes, the order they run in, and what is refused; a real run of two dependent merges."""

import pytest
import torch
import yaml
from safetensors.torch import load_file

from otamerge.errors import OtaMergeError
from otamerge.multimerge import plan_documents


def _docs(*docs):
    return yaml.safe_dump_all(list(docs))


def test_merges_run_after_the_merges_they_read_and_read_their_folders():
    text = _docs({"name": "final", "merge_method": "linear", "models": [{"model": "mid"}, {"model": "org/c"}]},
                 {"merge_method": "ties", "base_model": "mid", "models": [{"model": "first"}],
                  "tokenizer_source": "first"},
                 {"name": "mid", "merge_method": "slerp", "base_model": "org/a",
                  "slices": [{"sources": [{"model": "first", "layer_range": [0, 2]}]}]},
                 {"name": "first", "merge_method": "linear", "models": [{"model": "org/a"}, {"model": "org/b"}]})
    steps = plan_documents(text, "inter", "out")
    assert [s.name for s in steps] == ["first", "mid", "final", None]
    assert [s.out for s in steps] == ["inter/first", "inter/mid", "inter/final", "out"]
    mid, final, last = steps[1].config, steps[2].config, steps[3].config
    assert mid["slices"][0]["sources"][0]["model"] == "inter/first" and mid["base_model"] == "org/a"
    assert [m["model"] for m in final["models"]] == ["inter/mid", "org/c"] and "name" not in final
    assert (last["base_model"], last["tokenizer_source"]) == ("inter/mid", "inter/first")


@pytest.mark.parametrize("docs,out,message", [
    ([{"merge_method": "linear"}], None, "give --out-path"),
    ([{"name": "a", "merge_method": "linear"}, {"name": "a", "merge_method": "ties"}], None, "share a name"),
    ([{"name": "a", "base_model": "b"}, {"name": "b", "base_model": "a"}], None, "cycle: a -> b -> a"),
    (["linear"], None, "must be a merge config"),
])
def test_files_that_cannot_run_are_refused_before_any_merge(docs, out, message):
    with pytest.raises(OtaMergeError, match=message):
        plan_documents(_docs(*docs), "inter", out)


def test_a_named_merge_read_by_the_final_one_through_the_command_line(tmp_path, capsys):
    from checkpoints import make_family
    from otamerge.cli import main

    fam = make_family(tmp_path / "fam", n_experts=2, seed=2, hidden=16)
    cfg = tmp_path / "multi.yml"
    cfg.write_text(_docs(
        {"name": "avg", "merge_method": "linear", "dtype": "float32",
         "models": [{"model": str(fam["expert0"]), "parameters": {"weight": 1.0}},
                    {"model": str(fam["expert1"]), "parameters": {"weight": 1.0}}]},
        {"merge_method": "task_arithmetic", "base_model": str(fam["base"]), "dtype": "float32",
         "models": [{"model": "avg", "parameters": {"weight": 2.0}}]}))
    argv = ["multi", str(cfg), "-I", str(tmp_path / "inter"), "--out-path", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 0
    w = {m: load_file(fam[m] / "model.safetensors") for m in ("base", "expert0", "expert1")}
    out = load_file(tmp_path / "out/model.safetensors")
    for name in out:  # base + 2 ((e0 + e1) / 2 - base)
        want = w["base"][name] + 2 * ((w["expert0"][name] + w["expert1"][name]) / 2 - w["base"][name])
        torch.testing.assert_close(out[name], want, rtol=1e-5, atol=1e-6)
    mtime = (tmp_path / "inter/avg/model.safetensors").stat().st_mtime_ns
    assert main(argv) == 0  # lazy: both folders hold models, nothing merged again
    assert "already holds a model" in capsys.readouterr().out
    assert (tmp_path / "inter/avg/model.safetensors").stat().st_mtime_ns == mtime
