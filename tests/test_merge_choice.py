"""The density a merge chooses itself: validation prompts disjoint from the test prompts,
validation retention of each sweep point by hand, the choice, and the report table."""

import math

import pandas as pd
import pytest

from otamerge.families import get_family, validation_set
from otamerge.report import merge_choice as mc


@pytest.mark.parametrize("family,task", [("tiny", "add"), ("tiny", "sort"), ("pretrained", "upper"),
                                         ("pretrained", "capital")])
def test_validation_prompts_are_distinct_seeded_and_none_is_a_test_prompt(family, task):
    fam = get_family(family)
    val = validation_set(fam, task, 30, seed=3)
    test = {p for p, _ in fam.eval_set(task, 30, 3)}
    assert len(val) == 30 and len({p for p, _ in val}) == 30 and not {p for p, _ in val} & test
    assert val == validation_set(fam, task, 30, seed=3) and val != validation_set(fam, task, 30, seed=4)
    # the answers are the task's own (the training sampler's, without the base's other convention)
    assert dict(val).items() <= dict(fam.train_examples(task, 600, 30, 3, f"validation/{task}/3")).items()


def test_a_task_whose_every_prompt_is_a_test_prompt_has_no_validation():
    fam = get_family("tiny")
    assert validation_set(fam, "facts", 100, seed=0) == []  # the whole table of 50 is the test set


def _rows(scores: dict) -> pd.DataFrame:
    return pd.DataFrame([{"model": m, "task": t, "metric": "token_accuracy", "score": s, "seed": 0}
                         for m, tasks in scores.items() for t, s in tasks.items()])


TASKS = {"add": "add", "rev": "reverse", "facts": "facts"}
VALIDATION = _rows({"base": {"add": 0.5, "reverse": 0.2}, "add": {"add": 0.9, "reverse": 0.2},
                    "rev": {"add": 0.5, "reverse": 0.7},
                    "merge/m@0.1": {"add": 0.7, "reverse": 0.45}, "merge/m@0.5": {"add": 0.8, "reverse": 0.3}})
POINTS = {"0.1": "m@0.1", "0.5": "m@0.5"}


def test_validation_retention_leaves_out_an_expert_without_validation_prompts():
    got = mc.validation_retention(VALIDATION, POINTS, ["add", "rev", "facts"], TASKS, "token_accuracy")
    # 0.1: add (0.7-0.5)/(0.9-0.5) = 0.5, rev (0.45-0.2)/0.5 = 0.5; 0.5: 0.75 and 0.2; facts has no rows
    assert got == pytest.approx({"0.1": 0.5, "0.5": 0.475})
    assert mc.chosen_density(got) == "0.1"
    no_gain = pd.concat([VALIDATION[VALIDATION.model != "rev"], _rows({"rev": {"add": 0.5, "reverse": 0.2}})])
    # rev no better than the base on its task: add alone chooses (0.5 vs 0.75)
    assert mc.validation_retention(no_gain, POINTS, ["add", "rev"], TASKS, "token_accuracy") == pytest.approx(
        {"0.1": 0.5, "0.5": 0.75})
    assert mc.chosen_density({"0.5": 0.6, "0.1": 0.6, "0.2": math.nan}) == "0.1"  # a tie: the smaller density
    with pytest.raises(ValueError, match="no sweep point has a validation retention"):
        mc.chosen_density({"0.1": math.nan})


def test_the_choice_table_reads_the_chosen_points_test_retention():
    by_seed = pd.DataFrame([{"merge": m, "seed": 0, "backend": "builtin", "metric": "exact_match", "retention": r}
                            for m, r in (("m", 0.6), ("m@0.1", 0.55), ("m@0.5", 0.9))])
    table = mc.choice_table(VALIDATION, by_seed, {"m": POINTS}, {"m": ["add", "rev", "facts"]}, TASKS,
                            "token_accuracy")
    assert table.to_dict("records") == [{"merge": "m", "seed": 0, "density": 0.1, "validation_retention": 0.5,
                                         "test_retention": 0.55, "configured_test_retention": 0.6}]
    md = mc.choice_markdown(table, "token_accuracy")
    assert "| m       | 0.1" in md and "-0.050" in md
