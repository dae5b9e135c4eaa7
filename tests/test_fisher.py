"""The empirical Fisher against a direct per-sample computation, and its refusals."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from otamerge.workflow import layout
from otamerge.cli import main
from otamerge.demo.model import make_batch, token_table
from otamerge.demo.tokenizer import ALPHABET
from otamerge.errors import OtaMergeError
from otamerge.curvature.fisher import FisherCalibration, squared_gradients, text_windows, write_fisher
from otamerge.families import fisher_task
from otamerge.curvature.moments import Moments

from checkpoints import make_family
from conftest import REPO, tiny_config
from workflow_utils import job_counts, rule_resources, snakemake


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict[str, Path]:
    return make_family(tmp_path_factory.mktemp("fam"), n_experts=1)


def _text(path: Path, n: int) -> Path:
    rng = random.Random(0)
    path.write_text("".join(rng.choice(ALPHABET) for _ in range(n)))
    return path


def _direct(model_dir: Path, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean over batches of the squared gradient of each batch's loss, written plainly
    with autograd.grad in fp64 (the model in fp64 too)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    names, params = zip(*model.named_parameters())
    total = [torch.zeros_like(p) for p in params]
    for ids, labels in batches:
        grads = torch.autograd.grad(model(input_ids=ids, labels=labels).loss, params)
        total = [t + g * g for t, g in zip(total, grads)]
    return {n: t / len(batches) for n, t in zip(names, total)}


def _close(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == ref.keys()
    for name, r in ref.items():
        err = float((ours[name].double() - r).abs().max() / r.abs().max())
        assert err < 1e-6, (name, err)
        assert ours[name].dtype == torch.float32


def test_per_sample_fisher_of_text_windows_matches_a_direct_loop(family, tmp_path):
    expert = family["expert0"]
    cal = FisherCalibration(path=str(_text(tmp_path / "cal.txt", 200)), samples=6, seqlen=8, seed=3)
    out = tmp_path / "fisher.safetensors"
    meta = write_fisher(expert, out, cal, device="cpu", progress=False)
    windows = text_windows(AutoTokenizer.from_pretrained(expert), cal)
    # distinct, non-overlapping windows of the text (one token per character here)
    text = (tmp_path / "cal.txt").read_text()
    starts = sorted(text.find("".join(ALPHABET[i - 4] for i in w.tolist())) for w in windows)
    assert len(set(starts)) == 6 and all(s % 8 == 0 for s in starts)
    ours = load_file(out)
    _close(ours, _direct(expert, [(w[None], w[None]) for w in windows]))
    assert meta["samples"] == 6 and meta["batches"] == 6 and meta["kind"] == "empirical_fisher"
    write_fisher(expert, tmp_path / "again.safetensors", cal, device="cpu", progress=False)
    assert (tmp_path / "again.safetensors").read_bytes() == out.read_bytes()  # same inputs, same bytes
    # read as moments: every weight of the model has its curvature, same shape
    mom = Moments(out, "fisher")
    assert sorted(mom.ckpt.names()) == sorted(load_file(expert / "model.safetensors"))
    assert float(mom.get("model.embed_tokens.weight").sum()) > 0


def test_batched_fisher_squares_each_batch_mean_gradient(family, tmp_path):
    expert = family["expert0"]
    cal = FisherCalibration(task="add", samples=6, batch_size=3, seed=1, n_eval=10)
    out = tmp_path / "fisher.safetensors"
    write_fisher(expert, out, cal, device="cpu", progress=False, task=fisher_task(cal))
    tok = AutoTokenizer.from_pretrained(expert)
    special = (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    examples = fisher_task(cal).examples
    assert all(p.endswith("=") and len(a) == 3 for p, a in examples)
    batches = [make_batch(examples[i:i + 3], token_table(tok), *special) for i in (0, 3)]
    _close(load_file(out), _direct(expert, batches))
    # batch 1 is the per-sample Fisher, a different (larger) quantity
    per_sample = tmp_path / "per_sample.safetensors"
    per_sample_cal = FisherCalibration(task="add", samples=6, seed=1, n_eval=10)
    write_fisher(expert, per_sample, per_sample_cal, "cpu", False, task=fisher_task(per_sample_cal))
    ratio = float(load_file(per_sample)["lm_head.weight"].sum() / load_file(out)["lm_head.weight"].sum())
    assert ratio > 1.5


def test_too_short_calibration_is_one_line_and_writes_nothing(family, tmp_path, capsys):
    cal = _text(tmp_path / "cal.txt", 40)
    out = tmp_path / "f.safetensors"
    rc = main(["fisher", str(family["expert0"]), "--calibration", str(cal), "--samples", "6", "--seqlen", "8",
               "--out", str(out), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err
    assert err == (f"otamerge: error: calibration file {cal} is too short: 40 tokens make 5 windows of 8, "
                   "fewer than the 6 samples asked for")
    assert list(tmp_path.iterdir()) == [cal]


def test_nan_weight_is_one_line_and_writes_nothing(family, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in family["expert0"].iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
    weights = load_file(bad / "model.safetensors")
    weights["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(weights, str(bad / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "f.safetensors"
    rc = main(["fisher", str(bad), "--task", "add", "--samples", "4", "--out", str(out), "--quiet",
               "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the weights' loading bar
    assert rc == 1
    assert err == f"otamerge: error: model {bad}: the loss of calibration batch 0 is nan (NaN or Inf weights?); " \
                  "nothing written"
    assert not out.exists() and not list(tmp_path.glob(".f.safetensors*"))


def test_an_infinite_gradient_under_a_finite_loss_is_refused():
    class Root(torch.nn.Module):  # d sqrt(w) / dw at w = 0 is inf, the loss is 0
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(3))

        def forward(self, input_ids, labels, use_cache):
            return SimpleNamespace(loss=self.w.sqrt().sum())

    batch = (torch.zeros(1, 2, dtype=torch.long),) * 2
    with pytest.raises(OtaMergeError, match=r"^m: the gradient of w is NaN or Inf on the calibration set"):
        squared_gradients(Root(), [batch], "m", progress=False)


def test_samples_must_fill_whole_batches():
    with pytest.raises(OtaMergeError, match="samples 10 is not a multiple of batch_size 4"):
        FisherCalibration(task="add", samples=10, batch_size=4).check()


def test_dry_run_with_empirical_fisher_feeds_ffg_and_merges_from_it(tmp_path):
    cfg = tiny_config()  # experts add and rev; merges ota_ffg and ties
    cfg["ffg"]["metrics"] = ["fisher", "fisher_rank1"]
    cfg["curvature"] = {"source": "empirical_fisher", "experts": {"rev": "adam"}, "samples": 256}
    cfg["moments"] = {"bias_correction": True}  # of Adam's moments only
    res = snakemake(tmp_path, "-n", config=cfg)
    assert res.returncode == 0, res.stderr[-2000:]
    counts = job_counts(res.stdout + res.stderr)
    assert counts["empirical_fisher"] == 1 and counts["compress_moments"] == 2  # rev keeps its Adam moments
    assert counts["bias_correct_moments"] == 1
    assert rule_resources(res.stdout, "empirical_fisher") == {"gpu": "0", "mem_mb": "2003", "runtime": "11"}
    jobs = res.stdout.split("\n\n")
    fisher = layout.fisher_moments(0, "add")
    # the Fisher file is what FFG (full and rank-1 through compress_moments) and the merges read
    assert any(f"rule ffg:\n    input: results/seed0/models/base, results/seed0/models/add, {fisher}" in j
               for j in jobs)
    assert any(f"rule compress_moments:\n    input: {fisher}" in j for j in jobs)
    assert any("rule merge_config:" in j and fisher in j and "results/seed0/models/rev" in j for j in jobs)
    assert not any("rule ffg:\n    input: results/seed0/models/base, results/seed0/models/add, "
                   "results/seed0/models/add\n" in j for j in jobs)
    cfg["curvature"]["source"] = "hessian"
    res = snakemake(tmp_path, "-n", config=cfg)
    assert res.returncode != 0 and "'hessian' is not one of ['adam', 'empirical_fisher']" in res.stdout + res.stderr


def test_hub_experts_with_empirical_fisher_need_no_preconditioner_but_calibration(tmp_path):
    cfg = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    expert = next(iter(cfg["models"]["experts"]))
    del cfg["models"]["experts"][expert]["preconditioner"]  # a public fine-tune without optimizer state
    cfg["curvature"] = {"experts": {expert: "empirical_fisher"}}
    res = snakemake(tmp_path, "-n", config=cfg)
    assert res.returncode != 0
    assert "curvature source empirical_fisher needs curvature.calibration" in res.stdout + res.stderr
    (tmp_path / "cal.txt").write_text("text")
    cfg["curvature"]["calibration"] = str(tmp_path / "cal.txt")
    res = snakemake(tmp_path, "-n", config=cfg)
    assert res.returncode == 0, res.stderr[-2000:]
    assert job_counts(res.stdout + res.stderr)["empirical_fisher"] == 1
    assert f"input: results/seed0/models/{expert}, {tmp_path / 'cal.txt'}" in res.stdout
    assert rule_resources(res.stdout, "empirical_fisher")["gpu"] == "1"


def test_task_examples_never_draw_the_runs_held_out_prompts():
    from otamerge.demo.tasks import eval_set

    held = {p for p, _ in eval_set("add", 100, 0)}
    drawn = {p for p, _ in fisher_task(FisherCalibration(task="add", samples=2000, seed=5, heldout_seed=0)).examples}
    assert not drawn & held
    # with the sampling seed taken for the run's, seed 0's held-out prompts are drawn
    other = {p for p, _ in fisher_task(FisherCalibration(task="add", samples=2000, seed=5)).examples}
    assert len(other & held) > 5


def test_at_most_one_gradient_lives_at_a_time(family):
    model = AutoModelForCausalLM.from_pretrained(family["expert0"]).eval()
    params = list(model.parameters())
    live = []
    for p in params:  # registered first, so each runs before the Fisher's hook frees the gradient
        p.register_post_accumulate_grad_hook(lambda _: live.append(sum(q.grad is not None for q in params)))
    ids = torch.arange(4, 12)[None]
    squared_gradients(model, [(ids, ids)] * 2, "m", progress=False)
    assert len(live) == 2 * len(params) and max(live) == 1
    assert all(p.grad is None for p in params)
