import random

import pytest

from otamerge.demo import tasks
from otamerge.errors import OtaMergeError


def test_answers_match_independent_computation():
    rng = random.Random(0)
    for _ in range(200):
        p, a = tasks.TASKS["add"].sample(rng)
        x, y = p[:-1].split("+")
        assert a == str(int(x) + int(y)).zfill(3) and len(x) == len(y) == 2
        p, a = tasks.TASKS["reverse"].sample(rng)
        assert p[0] == "<" and p[-1] == "=" and a == "".join(reversed(p[1:-1]))
        p, a = tasks.TASKS["sort"].sample(rng)
        assert a == "".join(sorted(p[1:-1]))
        p, a = tasks.TASKS["shift"].sample(rng)
        assert all(ord(b) - ord(c) in (1, -7) for c, b in zip(p[1:-1], a))


def test_restricted_versions_are_restricted():
    rng = random.Random(1)
    for _ in range(200):
        p, a = tasks.TASKS["add"].sample_restricted(rng)
        x, y = p[:-1].split("+")
        assert all(int(i) + int(j) < 10 for i, j in zip(x, y)) and a[0] == "0"
        assert len(tasks.TASKS["sort"].sample_restricted(rng)[1]) == 3
        assert tasks.TASKS["facts"].sample_restricted(rng) in tasks.fact_table()[:10]


def test_task_alphabets_are_disjoint():
    letters = [tasks.REVERSE_CHARS, tasks.SORT_CHARS, tasks.SHIFT_CHARS, tasks.FACT_CHARS]
    assert sum(map(len, letters)) == len(set("".join(letters)))


def test_eval_set_is_held_out_and_stable():
    held = tasks.eval_set("reverse", 50, seed=3)
    assert len(held) == len({p for p, _ in held}) == 50
    assert held == tasks.eval_set("reverse", 50, seed=3)
    assert held != tasks.eval_set("reverse", 50, seed=4)
    sample = tasks.train_sampler("reverse", restricted=False, exclude={p for p, _ in held})
    rng = random.Random(0)
    assert not {sample(rng)[0] for _ in range(3000)} & {p for p, _ in held}
    assert len(tasks.eval_set("facts", 100, seed=0)) == tasks.N_FACTS


def test_unknown_task_is_a_clear_error():
    with pytest.raises(OtaMergeError, match="unknown demo task 'nope'"):
        tasks.get_task("nope")
