"""The demo's synthetic capabilities: prompts, answers and their restricted versions.

Each task uses its own characters (digits, a-i, j-r, s-z, upper case) so that experts
touch mostly disjoint embedding rows, as real experts touch mostly disjoint skills. The
base model is trained on RESTRICTED versions only (sums without carries, 3-letter words,
10 of 50 facts), which leaves it at roughly 20-35% on the full tasks: far enough below
the experts to show what merging keeps, stable enough across seeds to compare methods.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

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
    n = len(SHIFT_CHARS)
    shifted = "".join(SHIFT_CHARS[(SHIFT_CHARS.index(c) + 1) % n] for c in w)
    return f">{w}=", shifted


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


_FACTS = fact_table()


def _fact(rng: random.Random, n: int = N_FACTS) -> Example:
    return _FACTS[rng.randrange(n)]


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("add", "two-digit addition, zero-padded (07+45=052)", 3,
             _add, lambda r: _add(r, carries=False)),
        Task("reverse", "reverse a word over a-i", 5, _reverse, lambda r: _reverse(r, (3,))),
        Task("sort", "sort the letters of a word over j-r", 5, _sort, lambda r: _sort(r, (3,))),
        Task("shift", "shift each letter of a word over s-z by one", 5,
             _shift, lambda r: _shift(r, (3,))),
        Task("facts", "recall a fixed table of 50 facts (KEY -> VALUE)", 3,
             _fact, lambda r: _fact(r, N_RESTRICTED_FACTS)),
    )
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        from otamerge.errors import OtaMergeError

        raise OtaMergeError(f"unknown demo task {name!r}; known: {', '.join(TASKS)}") from None


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


def train_sampler(task: str, restricted: bool, exclude: set[str]) -> Callable[[random.Random], Example]:
    """A sampler of training examples that never returns a held-out prompt."""
    t = get_task(task)
    base = t.sample_restricted if restricted else t.sample

    def sample(rng: random.Random) -> Example:
        while True:
            ex = base(rng)
            if ex[0] not in exclude or task == "facts":
                return ex

    return sample
