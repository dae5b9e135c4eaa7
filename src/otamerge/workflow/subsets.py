"""Merges of subsets of the experts, expanded from the config's ``subsets`` section.

The merge of all experts shows how much a method keeps when every expert competes for
the same weights; subsets show how that falls with the number of experts (the field
reports merges of pairs next to merges of all). A subset merge is the configured merge's
spec with ``experts`` set to the subset, named ``<merge>.<subset>``: ``ota_ffg.add-facts``
for a pair (experts in the merge's order, joined by ``-``), ``ota_ffg.arith_facts`` for a
named group. The names match the config's name pattern, so they are valid wildcards,
folders and job names.

Imports no torch: the workflow expands the merges while building the DAG.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Sequence

from otamerge.workflow.merge_specs import FFG_METRICS

ALL = "all"  # the subset column of a merge of every expert it is configured with
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class MergeInfo:
    """What a merge combines: its configured merge (``method``), which subset, which experts."""

    name: str
    method: str
    subset: str
    experts: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.experts)


def _merge_experts(name: str, spec: dict[str, Any], experts: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(spec.get("experts") or experts)
    unknown = [e for e in chosen if e not in experts]
    if unknown:
        raise ValueError(f"merges.{name}.experts: unknown expert {', '.join(unknown)} (experts: {', '.join(experts)})")
    for key in ("thresholds", "expert_parameters"):  # per-expert values only for experts it merges
        outside = [e for e in spec.get(key) or {} if e not in chosen]
        if outside:
            raise ValueError(f"merges.{name}.{key}: {', '.join(outside)} not among the experts it merges "
                             f"({', '.join(chosen)})")
    ffg_moments = FFG_METRICS[spec["ffg"]][1] if spec.get("ffg") else None
    if ffg_moments and spec.get("moments") and spec["moments"] != ffg_moments:
        raise ValueError(f"merges.{name}: ffg {spec['ffg']} masks with {ffg_moments} moments but moments is "
                         f"{spec['moments']}; leave moments out (ffg sets it)")
    if spec.get("thresholds") and spec["method"] != "ota":
        raise ValueError(f"merges.{name}.thresholds: fixed FFG thresholds mask OTA merges only, not {spec['method']}")
    return chosen


def _groups(groups: dict[str, Sequence[str]], experts: Sequence[str]) -> dict[str, frozenset[str]]:
    """Each named group as a set, checked: known experts, at least two, no two alike."""
    out: dict[str, frozenset[str]] = {}
    for g, members in groups.items():
        unknown = [e for e in members if e not in experts]
        if unknown:
            raise ValueError(f"subsets.groups.{g}: unknown expert {', '.join(unknown)} (experts: {', '.join(experts)})")
        if len(set(members)) < 2:
            raise ValueError(f"subsets.groups.{g} has {len(set(members))} expert(s); a subset merges at least 2")
        same = [h for h, s in out.items() if s == frozenset(members)]
        if same:
            raise ValueError(f"subsets.groups.{g} has the same experts as subsets.groups.{same[0]}")
        out[g] = frozenset(members)
    return out


def _subsets_of(method: str, own: tuple[str, ...], groups: dict[str, frozenset[str]],
                pairs: bool) -> list[tuple[str, tuple[str, ...]]]:
    """(label, experts in the merge's order) of every proper subset of a merge's experts:
    the named groups, then the pairs no group names. A subset equal to all of the merge's
    experts is that merge itself, so it is not repeated."""
    found: list[tuple[str, tuple[str, ...]]] = []
    named = set()
    for g, members in groups.items():
        outside = sorted(members - set(own))
        if outside:
            raise ValueError(f"subsets.groups.{g}: {', '.join(outside)} not among the experts merged by {method} "
                             f"({', '.join(own)})")
        named.add(members)
        if members != set(own):
            found.append((g, tuple(e for e in own if e in members)))
    if pairs:
        found += [("-".join(p), p) for p in itertools.combinations(own, 2)
                  if frozenset(p) not in named and set(p) != set(own)]
    return found


def expand_merges(merges: dict[str, dict[str, Any]], experts: Sequence[str],
                  subsets: dict[str, Any] | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, MergeInfo]]:
    """Every merge to run: the configured ones (in config order, each over its experts,
    default all), then each subset of ``subsets.methods`` (a pair or a named group of its
    experts). Returns name -> spec and name -> MergeInfo. Raises ValueError, naming the
    key, for a method that is not a configured merge, an unknown expert, a group of fewer
    than two experts, or a name used twice."""
    specs = {name: spec for name, spec in merges.items()}
    infos = {name: MergeInfo(name, name, ALL, _merge_experts(name, spec, experts)) for name, spec in merges.items()}
    subsets = subsets or {}
    groups = _groups(subsets.get("groups") or {}, experts)
    for method in subsets.get("methods") or []:
        if method not in merges:
            raise ValueError(f"subsets.methods: {method} is not a configured merge (merges: {', '.join(merges)})")
        for label, members in _subsets_of(method, infos[method].experts, groups, bool(subsets.get("pairs"))):
            name = f"{method}.{label}"
            if name in specs:
                raise ValueError(f"subset merge {name} ({', '.join(members)}) has the name of another merge")
            if not _NAME.match(name):
                raise ValueError(f"subset merge name {name!r} is not a valid name")
            specs[name] = {**merges[method], "experts": list(members)}
            infos[name] = MergeInfo(name, method, label, members)
    return specs, infos
