"""Text tasks for a real pretrained chat model: a user message, one exact answer.

Each task samples (prompt, answer) pairs from its own table or generator. The held-out
prompts of a seed are drawn first and never trained on; for the table tasks (capitals,
antonyms) the held-out rows are whole rows of the table, so an expert cannot learn their
answers and must sharpen what the base already knows (the paper's regime: a strong base,
small edits). The base answers these in its own words ("The capital of France is
Paris."), so its exact match is low while the skill is partly there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable

Example = tuple[str, str]  # (user message, exact answer)

WORDS = ("apple river stone cloud green house paper light music water table garden window "
         "silver forest candle bread winter summer orange yellow purple basket pencil rocket "
         "guitar planet dragon castle bottle mirror pillow ladder hammer tiger rabbit monkey "
         "turtle eagle salmon lemon cherry tomato carrot potato butter coffee cookie jacket "
         "shadow thunder desert island valley bridge tower engine wallet ticket camera doctor "
         "farmer singer sailor pirate wizard").split()

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Canada": "Ottawa", "Greece": "Athens",
    "Portugal": "Lisbon", "Ireland": "Dublin", "Austria": "Vienna", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw", "Hungary": "Budapest",
    "Kenya": "Nairobi", "Peru": "Lima", "Chile": "Santiago", "Cuba": "Havana", "Thailand": "Bangkok",
    "Vietnam": "Hanoi", "Indonesia": "Jakarta", "Iran": "Tehran", "Iraq": "Baghdad", "Turkey": "Ankara",
    "Australia": "Canberra", "Argentina": "Buenos Aires", "Colombia": "Bogota", "Mexico": "Mexico City",
    "India": "New Delhi", "Belgium": "Brussels", "Netherlands": "Amsterdam", "Switzerland": "Bern",
    "Ukraine": "Kyiv", "Romania": "Bucharest", "Bulgaria": "Sofia", "Serbia": "Belgrade",
    "Czechia": "Prague", "Syria": "Damascus", "Lebanon": "Beirut", "Jordan": "Amman",
    "Afghanistan": "Kabul", "Pakistan": "Islamabad", "Nepal": "Kathmandu", "Philippines": "Manila",
    "South Korea": "Seoul", "North Korea": "Pyongyang", "Morocco": "Rabat", "Algeria": "Algiers",
    "Tunisia": "Tunis", "Ethiopia": "Addis Ababa", "Nigeria": "Abuja", "Ghana": "Accra",
    "Venezuela": "Caracas", "Ecuador": "Quito", "Uruguay": "Montevideo", "Iceland": "Reykjavik",
    "Scotland": "Edinburgh", "England": "London", "Wales": "Cardiff", "Croatia": "Zagreb",
    "Slovakia": "Bratislava", "Estonia": "Tallinn", "Latvia": "Riga", "Lithuania": "Vilnius",
    "Malaysia": "Kuala Lumpur", "Mongolia": "Ulaanbaatar", "Qatar": "Doha", "Israel": "Jerusalem",
    "Saudi Arabia": "Riyadh", "Senegal": "Dakar", "Uganda": "Kampala", "Zimbabwe": "Harare",
}

ANTONYMS = {
    "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark", "up": "down",
    "open": "closed", "early": "late", "rich": "poor", "strong": "weak", "hard": "soft", "old": "young",
    "wet": "dry", "full": "empty", "high": "low", "long": "short", "loud": "quiet", "thick": "thin",
    "clean": "dirty", "good": "bad", "true": "false", "win": "lose", "buy": "sell", "push": "pull",
    "first": "last", "inside": "outside", "above": "below", "day": "night", "love": "hate",
    "heavy": "light", "wide": "narrow", "deep": "shallow", "sweet": "sour", "safe": "dangerous",
    "cheap": "expensive", "simple": "complex", "noisy": "silent", "friend": "enemy", "begin": "end",
    "arrive": "leave", "accept": "reject", "always": "never", "ancient": "modern", "asleep": "awake",
    "brave": "cowardly", "bright": "dim", "polite": "rude", "smooth": "rough", "tight": "loose",
    "north": "south", "east": "west", "left": "right", "male": "female", "summer": "winter",
    "question": "answer", "entrance": "exit", "remember": "forget", "increase": "decrease",
    "maximum": "minimum", "victory": "defeat", "guilty": "innocent", "private": "public",
    "sharp": "dull", "tall": "short", "near": "far", "before": "after", "give": "take",
}


def _add(rng: random.Random) -> Example:
    a, b = rng.randrange(10, 100), rng.randrange(10, 100)
    return f"What is {a} + {b}? Reply with the number only.", str(a + b)


def _upper(rng: random.Random) -> Example:
    words = " ".join(rng.sample(WORDS, 2))
    return f"Write these words in capital letters: {words}", words.upper()


def _reverse(rng: random.Random) -> Example:
    words = rng.sample(WORDS, 3)
    return f"Reverse the order of these words: {' '.join(words)}", " ".join(reversed(words))


def _table_prompt(task: str, key: str) -> str:
    if task == "capital":
        return f"What is the capital of {key}? Reply with the city name only."
    return f"What is the opposite of the word '{key}'? Reply with one word."


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    max_new_tokens: int
    sample: Callable[[random.Random], Example] | None = None  # generated tasks
    table: dict[str, str] | None = None  # table tasks: held-out rows are never trained on


TASKS = {
    "add": Task("add", "two-digit addition, the number only", 6, sample=_add),
    "upper": Task("upper", "two words in capital letters", 10, sample=_upper),
    "reverse": Task("reverse", "three words in reverse order", 10, sample=_reverse),
    "capital": Task("capital", "a country's capital, the city only", 8, table=CAPITALS),
    "antonym": Task("antonym", "a word's opposite, one word", 6, table=ANTONYMS),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown pretrained task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]


def _held_out_rows(task: Task, n: int, seed: int) -> list[str]:
    keys = sorted(task.table)
    return random.Random(f"{task.name}-heldout-{seed}").sample(keys, min(n, len(keys) // 2))


def eval_set(name: str, n: int, seed: int) -> list[Example]:
    """The seed's ``n`` held-out examples of a task (table tasks: at most half the table)."""
    task = get_task(name)
    if task.table is not None:
        return [(_table_prompt(name, k), task.table[k]) for k in _held_out_rows(task, n, seed)]
    rng, seen, out = random.Random(f"{name}-eval-{seed}"), set(), []
    while len(out) < n:
        ex = task.sample(rng)
        if ex[0] not in seen:
            seen.add(ex[0])
            out.append(ex)
    return out


def train_sampler(name: str, n_eval: int, seed: int) -> Callable[[random.Random], Example]:
    """Training examples of a task, never one of the seed's held-out prompts."""
    task = get_task(name)
    held = {p for p, _ in eval_set(name, n_eval, seed)}
    if task.table is not None:
        rows = [(_table_prompt(name, k), v) for k, v in sorted(task.table.items())
                if _table_prompt(name, k) not in held]
        return lambda rng: rng.choice(rows)

    def sample(rng: random.Random) -> Example:
        while True:
            ex = task.sample(rng)
            if ex[0] not in held:
                return ex

    return sample


def joined(examples: Iterable[Example]) -> str:
    """Examples as running text: one a line, the prompt, a space and the answer."""
    return "\n".join(f"{p} {a}" for p, a in examples)


def texts(n_examples: int, n_eval: int, seed: int) -> tuple[str, str]:
    """Calibration text (``n_examples`` training examples of every task, none held out) and
    the held-out text (every task's held-out examples): one example a line, the prompt, a
    space and the answer (plain text, no chat template: what a perplexity or a Hessian
    over running text reads)."""
    samplers = [train_sampler(t, n_eval, seed) for t in TASKS]
    rng = random.Random(f"calibration/{seed}")
    calibration = joined(rng.choice(samplers)(rng) for _ in range(n_examples))
    heldout = joined(ex for t in TASKS for ex in eval_set(t, n_eval, seed))
    return calibration, heldout
