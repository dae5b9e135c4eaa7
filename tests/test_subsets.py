"""Merges of subsets of the experts, expanded from the config's subsets section."""

import re

import pytest

from otamerge.workflow.subsets import ALL, MergeInfo, expand_merges, sweep_points

EXPERTS = ["add", "rev", "facts"]
MERGES = {"ota_ffg": {"method": "ota", "ffg": "fisher", "parameters": {"power": 0.5}},
          "ties": {"method": "ties", "model_parameters": {"density": 0.3}},
          "linear": {"method": "linear"}}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # the config schema's name pattern


def test_without_subsets_every_merge_is_of_all_its_experts():
    specs, infos = expand_merges(MERGES, EXPERTS)
    assert specs == MERGES
    assert infos["ties"] == MergeInfo("ties", "ties", ALL, ("add", "rev", "facts")) and infos["ties"].size == 3


def test_pairs_of_the_chosen_methods_follow_the_merges_of_all():
    specs, infos = expand_merges(MERGES, EXPERTS, {"methods": ["ota_ffg", "linear"], "pairs": True})
    assert list(specs) == ["ota_ffg", "ties", "linear", "ota_ffg.add-rev", "ota_ffg.add-facts", "ota_ffg.rev-facts",
                           "linear.add-rev", "linear.add-facts", "linear.rev-facts"]
    # the same spec, with the subset as its experts; the merge of all is untouched
    assert specs["ota_ffg.rev-facts"] == {**MERGES["ota_ffg"], "experts": ["rev", "facts"]}
    assert "experts" not in specs["ota_ffg"]
    assert infos["linear.add-facts"] == MergeInfo("linear.add-facts", "linear", "add-facts", ("add", "facts"))
    assert all(NAME.match(n) for n in specs)


def test_named_groups_take_the_merges_order_and_name_their_pair():
    specs, infos = expand_merges(MERGES, EXPERTS, {"methods": ["ties"], "pairs": True,
                                                   "groups": {"arith_facts": ["facts", "add"]}})
    assert [n for n in specs if n.startswith("ties.")] == ["ties.arith_facts", "ties.add-rev", "ties.rev-facts"]
    assert specs["ties.arith_facts"]["experts"] == ["add", "facts"]
    assert infos["ties.arith_facts"].subset == "arith_facts" and infos["ties.arith_facts"].size == 2


def test_a_subset_equal_to_all_of_a_merges_experts_is_that_merge():
    specs, _ = expand_merges(MERGES, ["add", "rev"], {"methods": ["ties"], "pairs": True,
                                                      "groups": {"both": ["rev", "add"]}})
    assert list(specs) == list(MERGES)


def test_subsets_of_a_merge_with_its_own_experts_come_from_them():
    merges = {"ota": {"method": "ota", "experts": ["add", "rev", "facts"]}}
    specs, infos = expand_merges(merges, [*EXPERTS, "code"], {"methods": ["ota"], "pairs": True})
    assert [n for n in specs if n != "ota"] == ["ota.add-rev", "ota.add-facts", "ota.rev-facts"]
    assert infos["ota"].experts == ("add", "rev", "facts")


@pytest.mark.parametrize("merges,subsets,message", [
    (MERGES, {"methods": ["ota"], "pairs": True}, r"subsets.methods: ota is not a configured merge \(merges: ota_ffg, ties, linear\)"),
    (MERGES, {"methods": ["ties"], "groups": {"g": ["add", "code"]}}, r"subsets.groups.g: unknown expert code \(experts: add, rev, facts\)"),
    (MERGES, {"methods": ["ties"], "groups": {"g": ["add"]}}, r"subsets.groups.g has 1 expert\(s\); a subset merges at least 2"),
    (MERGES, {"methods": ["ties"], "groups": {"g": ["add", "rev"], "h": ["rev", "add"]}}, "subsets.groups.h has the same experts as subsets.groups.g"),
    ({"ties": {"method": "ties", "experts": ["add", "rev"]}}, {"methods": ["ties"], "groups": {"g": ["add", "facts"]}},
     r"subsets.groups.g: facts not among the experts merged by ties \(add, rev\)"),
    ({"ties": {"method": "ties", "experts": ["add", "coder"]}}, None, r"merges.ties.experts: unknown expert coder"),
    ({**MERGES, "ties.add-rev": {"method": "ties"}}, {"methods": ["ties"], "pairs": True},
     r"subset merge ties.add-rev \(add, rev\) has the name of another merge"),
])
def test_bad_subsets_are_refused_naming_the_key(merges, subsets, message):
    with pytest.raises(ValueError, match=message):
        expand_merges(merges, EXPERTS, subsets)


def test_pair_names_that_collide_are_refused():
    """Expert names may hold '-': (a-b, c) and (a, b-c) would share a name."""
    with pytest.raises(ValueError, match="has the name of another merge"):
        expand_merges({"ties": {"method": "ties"}}, ["a", "a-b", "b-c", "c"], {"methods": ["ties"], "pairs": True})


SWEEP = ["0.02", "0.05", "0.1"]


def test_a_density_sweep_adds_one_merge_per_density_after_the_subsets():
    merges = {"ota_ffg": {**MERGES["ota_ffg"], "densities": "sweep"},
              "ties": {"method": "ties", "densities": [0.05, 0.050],
                       "model_parameters": {"weight": 1.0, "density": 0.3},
                       "expert_parameters": {"add": {"density": 0.4, "weight": 0.5}}}}
    specs, infos = expand_merges(merges, EXPERTS, {"methods": ["ties"], "pairs": True}, SWEEP)
    assert list(specs) == ["ota_ffg", "ties", "ties.add-rev", "ties.add-facts", "ties.rev-facts",
                           "ota_ffg@0.02", "ota_ffg@0.05", "ota_ffg@0.1", "ties@0.05"]
    # no spec keeps densities: the configured merge and its subsets run as configured
    assert all("densities" not in spec for spec in specs.values())
    # an FFG merge keeps its spec (the workflow grafts every expert at the density)
    assert specs["ota_ffg@0.05"] == MERGES["ota_ffg"]
    assert infos["ota_ffg@0.05"] == MergeInfo("ota_ffg@0.05", "ota_ffg", ALL, tuple(EXPERTS), "0.05")
    # any other merge takes the density for every model, an expert's own density dropped
    assert specs["ties@0.05"]["model_parameters"] == {"weight": 1.0, "density": 0.05}
    assert specs["ties@0.05"]["expert_parameters"] == {"add": {"weight": 0.5}}
    assert specs["ties"]["model_parameters"]["density"] == 0.3 and infos["ties"].density is None
    assert all(NAME.match(n.replace("@", "-")) for n in specs)
    assert sweep_points(infos) == {"ota_ffg": {"0.02": "ota_ffg@0.02", "0.05": "ota_ffg@0.05", "0.1": "ota_ffg@0.1"},
                                   "ties": {"0.05": "ties@0.05"}}


@pytest.mark.parametrize("spec,message", [
    ({"method": "linear", "densities": "sweep"}, r"merges.m.densities: method linear has no density that changes its "
                                                 r"merge \(an FFG merge or ties, dare_ties, dare_linear, breadcrumbs, "
                                                 r"breadcrumbs_ties, della, della_linear can sweep one\)"),
    # they take a density, as in mergekit 0.1.5, and drop nothing by it: every point would be the same merge
    ({"method": "task_arithmetic", "densities": [0.1, 0.2]}, r"method task_arithmetic has no density that changes"),
    ({"method": "sce", "densities": "sweep"}, r"method sce has no density that changes"),
    ({"method": "ota", "ffg": "fisher", "densities": [0.3]}, r"merges.m.densities: 0.3 not in ffg.densities"),
])
def test_a_density_a_merge_cannot_take_is_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        expand_merges({"m": spec}, EXPERTS, None, SWEEP)
