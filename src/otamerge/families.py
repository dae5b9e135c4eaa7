"""The task families the workflow builds its own models for, one table for both.

``tiny``: the embedded demo (a character-level Llama trained here, BOS + prompt + answer
+ EOS). ``pretrained``: experts fine-tuned from a real pretrained chat model (SmolLM2),
each example through the model's own chat template. A family says how its held-out
prompts and training examples are drawn, how a batch of examples is encoded (loss on the
answer only), how a model answers prompts, and where an answer ends; the built-in
evaluator, lm_eval's task files and the empirical Fisher read a family from here instead
of knowing the demo's tasks. Importing this module and reading a family's tasks imports
no torch (lm_eval's job only writes task files); encoding and generating do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from otamerge.curvature.fisher import FisherCalibration, FisherTask
    import torch

Example = tuple[str, str]  # (prompt, exact answer)
# (input_ids, attention_mask or None, labels with -100 where no loss)
Batch = "tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]"


@dataclass(frozen=True)
class Family:
    name: str
    tasks: Callable[[], Sequence[str]]
    eval_set: Callable[[str, int, int], list[Example]]          # (task, n, seed)
    train_examples: Callable[[str, int, int, int, str], list[Example]]  # (task, count, n_eval, seed, stream)
    max_new_tokens: Callable[[str], int]
    encode: Callable[[object, Sequence[Example]], Batch]     # (tokenizer, examples)
    generate: Callable[[object, object, Sequence[str], int], list[str]]  # (model, tokenizer, prompts, k)
    texts: Callable[[int, int, int], tuple[str, str]]  # (n_examples, n_eval, seed) -> (calibration, held-out)
    join: Callable[[Sequence[Example]], str]  # examples as running text, as ``texts`` writes them
    stop: str            # the text of the token that ends an answer (lm_eval's generation stops there)
    chat: bool = False   # prompts go through the tokenizer's chat template (lm_eval --apply_chat_template)


def _draw(sample: Callable[[random.Random], Example], count: int, stream: str) -> list[Example]:
    rng = random.Random(stream)
    return [sample(rng) for _ in range(count)]


def _tiny() -> Family:
    from otamerge.demo import tasks

    def train_examples(task: str, count: int, n_eval: int, seed: int, stream: str) -> list[Example]:
        from otamerge.demo.train import held_out_prompts

        return _draw(tasks.train_sampler(task, restricted=False, exclude=held_out_prompts(n_eval, seed)), count, stream)

    def encode(tokenizer, examples: Sequence[Example]) -> Batch:
        from otamerge.demo.model import make_batch, token_table

        ids, labels = make_batch(examples, token_table(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                                 tokenizer.pad_token_id)
        return ids, None, labels

    def generate(model, tokenizer, prompts: Sequence[str], k: int) -> list[str]:
        from otamerge.evaluation.builtin import greedy_generate

        return greedy_generate(model, tokenizer, prompts, k)

    def texts(n: int, n_eval: int, seed: int) -> tuple[str, str]:
        from otamerge.demo.texts import calibration_text, heldout_text

        return calibration_text(n, n_eval, seed), heldout_text(n_eval, seed)

    return Family("tiny", lambda: list(tasks.TASKS), tasks.eval_set, train_examples,
                  lambda t: tasks.get_task(t).max_answer_len + 1, encode, generate, texts, tasks.joined,
                  stop="</s>")


def _pretrained() -> Family:
    from otamerge.pretrained import tasks

    def train_examples(task: str, count: int, n_eval: int, seed: int, stream: str) -> list[Example]:
        return _draw(tasks.train_sampler(task, n_eval, seed), count, stream)

    def encode(tokenizer, examples: Sequence[Example]) -> Batch:
        from otamerge.pretrained.chat import make_batch

        return make_batch(tokenizer, examples)

    def generate(model, tokenizer, prompts: Sequence[str], k: int) -> list[str]:
        from otamerge.pretrained.chat import greedy_answers

        return greedy_answers(model, tokenizer, prompts, k)

    return Family("pretrained", lambda: list(tasks.TASKS), tasks.eval_set, train_examples,
                  lambda t: tasks.get_task(t).max_new_tokens, encode, generate, tasks.texts, tasks.joined,
                  stop="<|im_end|>", chat=True)


FAMILIES = {"tiny": _tiny, "pretrained": _pretrained}


def validation_set(fam: Family, task: str, n: int, seed: int) -> list[Example]:
    """Up to ``n`` distinct examples of a task that are none of its ``n`` held-out (test)
    prompts, to choose settings on without a test prompt: drawn as training examples are
    (so an expert may have trained on some), from a stream of their own; empty where every
    prompt of a task is held out (the demo's facts: the whole table is its test set)."""
    held = {p for p, _ in fam.eval_set(task, n, seed)}
    found: dict[str, str] = {}
    for p, a in fam.train_examples(task, 20 * n, n, seed, f"validation/{task}/{seed}"):
        if p not in held:
            found.setdefault(p, a)
            if len(found) == n:
                break
    return sorted(found.items())


def task_text(fam: Family, task: str, n_examples: int, n_eval: int, seed: int) -> str:
    """``n_examples`` training examples of one task (none of its held-out prompts) as
    running text, seeded: an expert's own text (RegMean's Gram matrices of its inputs)."""
    return fam.join(fam.train_examples(task, n_examples, n_eval, seed, f"task_text/{task}/{seed}"))


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise KeyError(f"unknown task family {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]()


def answer_token_hits(family: Family, model, tokenizer, examples: Sequence[Example]) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(right, scored) per example: how many of its answer tokens (and the closing end
    token) the model predicts under teacher forcing, out of how many.

    Two costs are skipped, neither read: the tokens every example begins with (a chat
    template's system prompt and turn markers, about half of each short chat example) run
    once and their keys and values are shared by the batch; logits are computed only from
    the first position that predicts an answer token on (the vocabulary projection of the
    prompt positions is most of a small chat model's cost)."""
    import inspect

    import torch

    ids, mask, labels = family.encode(tokenizer, examples)
    target = labels[:, 1:]
    scored = target != -100
    first = int(scored.any(0).nonzero()[0])  # the earliest position whose next token is scored
    keep = target.shape[1] - first
    # the shared prefix, at most up to that position (the positions from it on need logits)
    shared = int((ids == ids[:1]).all(0).int().cumprod(0).sum())
    prefix = min(shared, first)
    # transformers 5.25 renamed past_key_values to cache (the old name warns)
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        cache = None
        if prefix:
            cache = getattr(model(input_ids=ids[:1, :prefix], use_cache=True), name)
            cache.batch_repeat_interleave(len(ids))
        logits = model(input_ids=ids[:, prefix:], attention_mask=mask, use_cache=cache is not None,
                       logits_to_keep=keep + 1, **{name: cache}).logits[:, :-1]
    right = (logits.argmax(-1) == target[:, first:]) & scored[:, first:]
    return right.sum(1), scored.sum(1)


def token_accuracy(family: Family, model, tokenizer, examples: Sequence[Example]) -> float:
    """Share of answer tokens (and the closing end token) predicted right under teacher forcing."""
    right, scored = answer_token_hits(family, model, tokenizer, examples)
    return float(right.sum() / scored.sum())


def fisher_task(cal: "FisherCalibration") -> "FisherTask | None":
    """The examples of a task calibration of the empirical Fisher, drawn from its family's
    training examples (never a held-out prompt of the run's seed), seeded; None for a text
    calibration."""
    from otamerge.curvature.fisher import FisherTask

    if cal.task is None:
        return None
    family = get_family(cal.family)
    heldout = cal.seed if cal.heldout_seed is None else cal.heldout_seed
    return FisherTask(family.train_examples(cal.task, cal.samples, cal.n_eval, heldout, f"fisher/{cal.task}/{cal.seed}"),
                      family.encode)
