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


def test_other_conventions_match_independent_computation():
    rng = random.Random(2)
    for _ in range(200):
        p, a = tasks.TASKS["add"].sample(rng)
        x, y = p[:-1].split("+")
        ones, tens = (int(x[1]) + int(y[1])) % 10, (int(x[0]) + int(y[0])) % 10
        assert tasks.TASKS["add"].alternative(p, a) == f"0{tens}{ones}"
        p, a = tasks.TASKS["reverse"].sample(rng)
        assert tasks.TASKS["reverse"].alternative(p, a) == p[1:-1]
        p, a = tasks.TASKS["sort"].sample(rng)
        assert tasks.TASKS["sort"].alternative(p, a) == "".join(sorted(p[1:-1], reverse=True))
        p, a = tasks.TASKS["shift"].sample(rng)
        other = tasks.TASKS["shift"].alternative(p, a)
        assert all(ord(b) - ord(c) in (2, -6) for c, b in zip(p[1:-1], other))
    table = tasks.fact_table()
    others = [tasks.TASKS["facts"].alternative(p, a) for p, a in table]
    assert all(o != a and len(o) == 3 and o.isupper() for o, (_, a) in zip(others, table))


def test_base_data_answers_a_share_by_the_other_convention():
    rng = random.Random(3)
    sample = tasks.train_sampler("sort", restricted=False, exclude=set(), alternative=0.6)
    rows = [sample(rng) for _ in range(4000)]
    other = sum(a == "".join(sorted(p[1:-1], reverse=True)) and a != "".join(sorted(p[1:-1]))
                for p, a in rows)
    same = sum(a == "".join(sorted(p[1:-1])) == "".join(sorted(p[1:-1], reverse=True)) for p, a in rows)
    # words of one repeated letter read the same both ways; the rest split 0.6 / 0.4
    assert abs(other / (len(rows) - same) - 0.6) < 0.03
    plain = tasks.train_sampler("sort", restricted=False, exclude=set())
    assert all(a == "".join(sorted(p[1:-1])) for p, a in (plain(rng) for _ in range(500)))


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
