"""The demo's plain-text files: calibration text for the SparseGPT Hessians, the
held-out text the perplexity backend scores, and each expert's own text (RegMean).

Examples are written as ``prompt + answer`` separated by spaces, on one line without a
final newline (the character-level tokenizer has no newline). Calibration text is drawn from the full tasks, never a
held-out prompt; the held-out text is exactly the evaluators' held-out examples.
"""

from __future__ import annotations

import random
from pathlib import Path

from otamerge.io.atomic import atomic_file
from otamerge.demo.tasks import TASKS, eval_set, joined
from otamerge.demo.train import held_out_prompts, mixture_sampler


def calibration_text(n_examples: int, n_eval: int, seed: int) -> str:
    sample = mixture_sampler(list(TASKS), restricted=False, exclude=held_out_prompts(n_eval, seed))
    rng = random.Random(f"calibration/{seed}")
    return joined(sample(rng) for _ in range(n_examples))


def heldout_text(n_eval: int, seed: int) -> str:
    return joined(ex for t in TASKS for ex in eval_set(t, n_eval, seed))


def write_texts(calibration: str | Path, heldout: str | Path, n_examples: int, n_eval: int, seed: int,
                family: str = "tiny") -> None:
    """The calibration and held-out texts of a task family (``otamerge.families``)."""
    from otamerge.families import get_family

    for path, text in zip((calibration, heldout), get_family(family).texts(n_examples, n_eval, seed)):
        with atomic_file(path) as fh:
            fh.write(text)


def write_expert_text(path: str | Path, family: str, task: str, n_examples: int, n_eval: int, seed: int) -> None:
    """One expert's own text: its task's training examples (``otamerge.families.task_text``)."""
    from otamerge.families import get_family, task_text

    with atomic_file(path) as fh:
        fh.write(task_text(get_family(family), task, n_examples, n_eval, seed))
