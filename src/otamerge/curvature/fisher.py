"""Empirical diagonal Fisher of an expert: curvature for experts that ship no optimizer state.

    F = (1/M) sum_m g_m * g_m,   g_m = gradient of the expert's loss on calibration batch m

over M = samples / batch_size batches. ``batch_size`` 1 (the default) makes each g_m the
gradient of one sample's loss: the per-sample empirical Fisher, the paper's
``fisher_diag_s1024`` ablation. A larger ``batch_size`` squares the gradient of the mean
loss of that many samples instead: the quantity Adam's ``exp_avg_sq`` tracks at that batch
size (without its moving average), ``batch_size`` times cheaper, and smaller than the
per-sample Fisher by about that factor where gradients are noise. FFG's one model-wide
threshold does not see the scale; OTA's weights compare experts, so give every expert of
a merge the same estimator.

A sample is a window of ``seqlen`` tokens of calibration text (causal LM loss on every
token; the windows do not overlap, so a text too short for ``samples`` of them is refused)
or an example of the expert's own task where the workflow built it (loss on the answer
and end token, as it was fine-tuned), handed in as data (``FisherTask``: the examples and
their encoding; ``otamerge.families.fisher_task`` draws them). Memory: the model plus one
fp32 accumulator of its size; each gradient is squared into the accumulator and freed as
soon as backward has produced it. The result is written in the moments format (parameter
names, fp32), so FFG, OTA and trimming read it wherever they read ``exp_avg_sq``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm import tqdm

from otamerge.io.atomic import write_safetensors
from otamerge.device import pick_device
from otamerge.errors import OtaMergeError
from otamerge.curvature.calibration import read_text

FISHER_META = "otamerge_fisher"  # one metadata key: several would vary the header's order
Batch = tuple[torch.Tensor, torch.Tensor]  # input ids, labels (-100: no loss)


@dataclass(frozen=True)
class FisherCalibration:
    """What the Fisher is estimated on: a text file (``path``) or a task of a family the
    workflow builds (``task``, e.g. the demo's)."""

    path: str | None = None
    task: str | None = None
    samples: int = 1024
    batch_size: int = 1
    seqlen: int = 128      # tokens per text window
    seed: int = 0          # which windows or task examples
    n_eval: int = 100      # the family's held-out prompts per task, never drawn...
    heldout_seed: int | None = None  # ...those of this run seed (default: seed)
    family: str = "tiny"   # whose task (otamerge.families)

    def check(self) -> None:
        if (self.path is None) == (self.task is None):
            raise OtaMergeError("empirical Fisher: give a calibration text file or a demo task (one of them)")
        if self.samples < 1 or self.batch_size < 1 or self.seqlen < 1:
            raise OtaMergeError("empirical Fisher: samples, batch_size and seqlen must be at least 1")
        if self.samples % self.batch_size:
            raise OtaMergeError(f"empirical Fisher: samples {self.samples} is not a multiple of "
                                f"batch_size {self.batch_size}")


def text_windows(tokenizer, cal: FisherCalibration) -> torch.Tensor:
    """(samples, seqlen) token ids: distinct, non-overlapping windows of the tokenized text,
    chosen at random (seeded) among all of them."""
    ids = torch.tensor(tokenizer(read_text(cal.path), add_special_tokens=False, verbose=False)["input_ids"],
                       dtype=torch.long)
    n = ids.numel() // cal.seqlen
    if n < cal.samples:
        raise OtaMergeError(f"calibration file {cal.path} is too short: {ids.numel()} tokens make {n} windows of "
                            f"{cal.seqlen}, fewer than the {cal.samples} samples asked for")
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(cal.seed))[:cal.samples]
    return ids[: n * cal.seqlen].view(n, cal.seqlen)[pick]


@dataclass(frozen=True)
class FisherTask:
    """A task calibration's samples as data: (prompt, answer) examples, and the family's
    encoding of a batch of them (tokenizer, examples) -> (input ids, mask, labels)."""

    examples: Sequence[tuple[str, str]]
    encode: Callable


def calibration_batches(tokenizer, cal: FisherCalibration, task: FisherTask | None = None) -> list[Batch]:
    """The calibration set cut into batches of ``batch_size`` samples."""
    cal.check()
    b = cal.batch_size
    if cal.path is not None:
        windows = text_windows(tokenizer, cal)
        return [(w, w) for w in windows.split(b)]  # the model shifts the labels itself
    if task is None:
        raise OtaMergeError(f"empirical Fisher on task {cal.task}: its examples are not given")
    examples = task.examples
    # right padding after the answer: causal attention keeps it out of every scored position
    return [(ids, labels) for ids, _, labels in (task.encode(tokenizer, examples[i:i + b])
                                                  for i in range(0, len(examples), b))]


def squared_gradients(model: torch.nn.Module, batches: list[Batch], label: str,
                      progress: bool = True) -> dict[str, torch.Tensor]:
    """(1/M) sum_m g_m^2 per parameter (fp32), g_m the gradient of the model's loss on
    batch m. Each gradient is added to the accumulator by a hook as soon as backward has
    produced it, then freed: at most one parameter's gradient lives at a time."""
    params = dict(model.named_parameters())
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}

    def add(name):
        def hook(p):
            g = p.grad.float()
            acc[name].addcmul_(g, g)
            p.grad = None
        return hook

    hooks = [p.register_post_accumulate_grad_hook(add(n)) for n, p in params.items()]
    dev = next(model.parameters()).device
    try:
        bar = tqdm(batches, desc=f"empirical Fisher {label}", unit="batch", disable=not progress, mininterval=2.0)
        for i, (ids, labels) in enumerate(bar):
            loss = model(input_ids=ids.to(dev), labels=labels.to(dev), use_cache=False).loss
            value = float(loss.detach())
            if value != value or abs(value) == float("inf"):
                raise OtaMergeError(f"{label}: the loss of calibration batch {i} is {value} "
                                    "(NaN or Inf weights?); nothing written")
            loss.backward()
            bar.set_postfix(loss=f"{value:.3f}", refresh=False)
    finally:
        for h in hooks:
            h.remove()
    for name, a in acc.items():
        a /= len(batches)
        if not bool(torch.isfinite(a).all()):
            raise OtaMergeError(f"{label}: the gradient of {name} is NaN or Inf on the calibration set; nothing written")
    return {n: a.cpu().contiguous() for n, a in acc.items()}


def estimate(model_dir: str | Path, cal: FisherCalibration, device: str = "auto", progress: bool = True,
             dtype: torch.dtype = torch.float32, task: FisherTask | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The empirical Fisher of the model in ``model_dir`` (its own tokenizer) and the
    metadata saying how it was made."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cal.check()
    label = f"model {model_dir}"
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    batches = calibration_batches(tokenizer, cal, task)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True,
                                                 trust_remote_code=False)
    limit = getattr(model.config, "max_position_embeddings", None)
    width = max(ids.shape[1] for ids, _ in batches)
    if limit and width > limit:
        raise OtaMergeError(f"{label}: calibration samples of {width} tokens exceed the model's {limit} positions")
    model.eval().to(pick_device(device))  # eval: no dropout, the loss itself
    fisher = squared_gradients(model, batches, label, progress)
    meta = {"kind": "empirical_fisher", **asdict(cal), "batches": len(batches), "model": str(model_dir),
            "dtype": str(dtype).removeprefix("torch.")}
    return fisher, meta


def write_fisher(model_dir: str | Path, out: str | Path, cal: FisherCalibration, device: str = "auto",
                 progress: bool = True, dtype: torch.dtype = torch.float32, task: FisherTask | None = None) -> dict:
    """Estimate and write the empirical Fisher to ``out`` (atomically, only when every
    tensor is finite); returns its metadata. ``task``: the examples of ``cal.task``."""
    fisher, meta = estimate(model_dir, cal, device, progress, dtype, task)
    write_safetensors(out, fisher, {FISHER_META: json.dumps(meta, sort_keys=True)})
    return meta
