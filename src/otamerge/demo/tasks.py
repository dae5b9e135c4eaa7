"""The demo's synthetic capabilities: prompts, answers, restricted versions, and each
task's other convention.

Each task uses its own characters (digits, a-i, j-r, s-z, upper case) so that experts
touch mostly disjoint embedding rows, as real experts touch mostly disjoint skills.

The base is pretrained on the full tasks, but a share of its answers (``alternative``,
0.6 by default) follow each task's other convention: addition without carries, the word
copied instead of reversed, sorted descending instead of ascending, shifted by two
instead of one, a second table of fact values. The base thus holds every skill and
format and prefers the wrong convention; an expert's fine-tuning only has to flip that
preference on its own task, which is the paper's regime (a strong base, small edits)
in miniature. The restricted versions (sums without carries, 3-letter words, 10 of 50
facts) were the first demo's base data, which made every expert's gain a new skill built
in the same shared weights; merges of those experts kept at most 5% of their gain.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable

Example = tuple[str, str]  # (prompt, answer); the model sees BOS + prompt + answer + EOS

REVERSE_CHARS = "abcdefghi"
SORT_CHARS = "jklmnopqr"
SHIFT_CHARS = "stuvwxyz"
FACT_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
N_FACTS = 50
N_RESTRICTED_FACTS = 10
WORD_LENGTHS = (3, 4, 5)


@dataclass(frozen=True)
class Task:
    """One capability: a sampler for the full task and one for its restricted version."""

    name: str
    description: str
    max_answer_len: int
    sample: Callable[[random.Random], Example]
    sample_restricted: Callable[[random.Random], Example]
    alternative: Callable[[str, str], str]  # (prompt, answer) -> the other convention's answer


def _word(rng: random.Random, chars: str, length: int) -> str:
    return "".join(rng.choice(chars) for _ in range(length))


def _add(rng: random.Random, carries: bool = True) -> Example:
    while True:
        a, b = rng.randrange(100), rng.randrange(100)
        if carries or (a % 10 + b % 10 < 10 and a // 10 + b // 10 < 10):
            # zero-padded so that every answer has three digits, one per place value
            return f"{a:02d}+{b:02d}=", f"{a + b:03d}"


def _reverse(rng: random.Random, lengths: tuple[int, ...] = WORD_LENGTHS) -> Example:
    w = _word(rng, REVERSE_CHARS, rng.choice(lengths))
    return f"<{w}=", w[::-1]


def _sort(rng: random.Random, lengths: tuple[int, ...] = WORD_LENGTHS) -> Example:
    w = _word(rng, SORT_CHARS, rng.choice(lengths))
    return f"#{w}=", "".join(sorted(w))


def _shift(rng: random.Random, lengths: tuple[int, ...] = WORD_LENGTHS) -> Example:
    w = _word(rng, SHIFT_CHARS, rng.choice(lengths))
    return f">{w}=", _shift_by(w, 1)


def _no_carry(prompt: str, answer: str) -> str:
    """Digit-wise sum without carries (the base's other convention for add)."""
    a, b = prompt[:2], prompt[3:5]
    return "0" + "".join(str((int(x) + int(y)) % 10) for x, y in zip(a, b))


def _shift_by(word: str, k: int) -> str:
    n = len(SHIFT_CHARS)
    return "".join(SHIFT_CHARS[(SHIFT_CHARS.index(c) + k) % n] for c in word)


def fact_table(n: int = N_FACTS) -> list[Example]:
    """A fixed table of 3-letter keys mapped to 3-letter values (independent of the seed,
    so that every seed's experts are asked about the same facts)."""
    rng = random.Random(20240611)
    keys: list[str] = []
    while len(keys) < n:
        k = _word(rng, FACT_CHARS, 3)
        if k not in keys:
            keys.append(k)
    return [(f"?{k}=", _word(rng, FACT_CHARS, 3)) for k in keys]


def other_fact_values(table: list[Example]) -> dict[str, str]:
    """The other convention for facts: a second value for each key, never the true one."""
    rng = random.Random(20240612)
    out = {}
    for prompt, value in table:
        while (other := _word(rng, FACT_CHARS, 3)) == value:
            pass
        out[prompt] = other
    return out


_FACTS = fact_table()
_OTHER_FACTS = other_fact_values(_FACTS)


def _fact(rng: random.Random, n: int = N_FACTS) -> Example:
    return _FACTS[rng.randrange(n)]


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("add", "two-digit addition, zero-padded (07+45=052)", 3,
             _add, lambda r: _add(r, carries=False), _no_carry),
        Task("reverse", "reverse a word over a-i", 5, _reverse, lambda r: _reverse(r, (3,)),
             lambda p, a: p[1:-1]),
        Task("sort", "sort the letters of a word over j-r", 5, _sort, lambda r: _sort(r, (3,)),
             lambda p, a: a[::-1]),
        Task("shift", "shift each letter of a word over s-z by one", 5,
             _shift, lambda r: _shift(r, (3,)), lambda p, a: _shift_by(p[1:-1], 2)),
        Task("facts", "recall a fixed table of 50 facts (KEY -> VALUE)", 3,
             _fact, lambda r: _fact(r, N_RESTRICTED_FACTS), lambda p, a: _OTHER_FACTS[p]),
    )
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        from otamerge.errors import OtaMergeError

        raise OtaMergeError(f"unknown demo task {name!r}; known: {', '.join(TASKS)}") from None


def joined(examples: Iterable[Example]) -> str:
    """Examples as the demo's running text (calibration, held-out and experts' texts):
    prompt + answer, separated by spaces (the character tokenizer has no newline)."""
    return " ".join(p + a for p, a in examples)


def eval_set(task: str, n: int, seed: int) -> list[Example]:
    """Held-out prompts of a task: ``n`` distinct examples drawn with their own seed.

    Facts cannot be held out (recall is the skill), so the facts set is the whole table.
    """
    if task == "facts":
        return list(_FACTS)
    rng = random.Random(f"eval/{task}/{seed}")
    seen: dict[str, str] = {}
    sampler = get_task(task).sample
    for _ in range(100 * n):
        if len(seen) == n:
            break
        p, a = sampler(rng)
        seen.setdefault(p, a)
    return sorted(seen.items())


def train_sampler(task: str, restricted: bool, exclude: set[str],
                  alternative: float = 0.0) -> Callable[[random.Random], Example]:
    """A sampler of training examples that never returns a held-out prompt; a share
    ``alternative`` of them is answered by the task's other convention."""
    t = get_task(task)
    base = t.sample_restricted if restricted else t.sample

    def sample(rng: random.Random) -> Example:
        while True:
            p, a = base(rng)
            if p not in exclude or task == "facts":
                return (p, t.alternative(p, a)) if alternative and rng.random() < alternative else (p, a)

    return sample
