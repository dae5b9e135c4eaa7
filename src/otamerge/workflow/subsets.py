"""Merges of subsets of the experts, expanded from the config's ``subsets`` section.

The merge of all experts shows how much a method keeps when every expert competes for
the same weights; subsets show how that falls with the number of experts (the field
reports merges of pairs next to merges of all). A subset merge is the configured merge's
spec with ``experts`` set to the subset, named ``<merge>.<subset>``: ``ota_ffg.add-facts``
for a pair (experts in the merge's order, joined by ``-``), ``ota_ffg.arith_facts`` for a
named group. The names match the config's name pattern, so they are valid wildcards,
folders and job names.

A merge with ``densities`` (``sweep``: every density of ``ffg.densities``, or a list of
them) also runs once per density, named ``<merge>@<density>`` (``ota_ffg@0.05``): an FFG
merge with every expert grafted at that density, any other merge with that ``density``
parameter (TIES, DARE, breadcrumbs), so merged retention can be read against density.

Imports no torch: the workflow expands the merges while building the DAG.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Sequence

from otamerge.ffg.densities import density_label
from otamerge.workflow.merge_specs import FFG_METRICS
from otamerge.methods.catalog import CATALOG, sweeps_density

ALL = "all"  # the subset column of a merge of every expert it is configured with
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SWEEP = "sweep"  # merges.<m>.densities: every density of the FFG sweep


@dataclass(frozen=True)
class MergeInfo:
    """What a merge combines: the configured merge it comes from (``configured``: itself, or
    the merge a subset or a density point is taken of; the tables' ``method`` column), which
    subset, which experts, and for a point of a merge's density sweep its density (a label,
    e.g. ``0.05``)."""

    name: str
    configured: str
    subset: str
    experts: tuple[str, ...]
    density: str | None = None

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
    for key in ("ffg", "thresholds"):
        if spec.get(key) and spec["method"] != "ota":
            raise ValueError(f"merges.{name}.{key}: FFG masks OTA merges only, not {spec['method']}")
    # FFG's thresholds are of v (w - w0)^2; without the base OTA masks by v alone (as the
    # paper's code does), so the chosen density would not be the one kept
    if spec.get("ffg") and spec.get("base") is False:
        raise ValueError(f"merges.{name}: ffg needs the base (base: false masks by the moments alone)")
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


def swept_name(merge: str, density: str) -> str:
    """``<merge>@<density>``: one point of a merge's density sweep."""
    return f"{merge}@{density}"


def _density_points(name: str, spec: dict[str, Any], sweep: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """(density label, spec) of each point of a merge's ``densities``: an FFG merge keeps
    its spec (the workflow grafts every expert at the density), another sets ``density``
    for every model; either way without ``densities``."""
    asked = spec.get("densities")
    if not asked:
        return []
    labels = list(sweep) if asked == SWEEP else list(dict.fromkeys(density_label(d) for d in asked))
    unswept = [d for d in labels if d not in sweep]
    if spec.get("ffg") and unswept:
        raise ValueError(f"merges.{name}.densities: {', '.join(unswept)} not in ffg.densities ({', '.join(sweep)})")
    if not spec.get("ffg") and not sweeps_density(spec["method"]):
        takers = ", ".join(m for m in CATALOG if sweeps_density(m))
        raise ValueError(f"merges.{name}.densities: method {spec['method']} has no density that changes its merge "
                         f"(an FFG merge or {takers} can sweep one)")
    base = {k: v for k, v in spec.items() if k != "densities"}
    points = []
    for d in labels:
        point = dict(base)
        if not spec.get("ffg"):
            point["model_parameters"] = {**(spec.get("model_parameters") or {}), "density": float(d)}
            point["expert_parameters"] = {e: {k: v for k, v in p.items() if k != "density"}
                                          for e, p in (spec.get("expert_parameters") or {}).items()}
        points.append((d, point))
    return points


def expand_merges(merges: dict[str, dict[str, Any]], experts: Sequence[str],
                  subsets: dict[str, Any] | None = None,
                  densities: Sequence[str] = ()) -> tuple[dict[str, dict[str, Any]], dict[str, MergeInfo]]:
    """Every merge to run: the configured ones (in config order, each over its experts,
    default all), then each subset of ``subsets.methods`` (a pair or a named group of its
    experts), then each point of a merge's ``densities`` (``densities``: the FFG sweep's
    labels). Returns name -> spec and name -> MergeInfo. Raises ValueError, naming the
    key, for a method that is not a configured merge, an unknown expert, a group of fewer
    than two experts, a density the merge cannot take, or a name used twice."""
    merges = {name: spec for name, spec in merges.items()}
    specs = {name: {k: v for k, v in spec.items() if k != "densities"} for name, spec in merges.items()}
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
            specs[name] = {**specs[method], "experts": list(members)}
            infos[name] = MergeInfo(name, method, label, members)
    for merge, spec in merges.items():
        for d, point in _density_points(merge, spec, densities):
            name = swept_name(merge, d)
            if name in specs:
                raise ValueError(f"density sweep merge {name} has the name of another merge")
            specs[name] = point
            infos[name] = MergeInfo(name, merge, ALL, infos[merge].experts, d)
    return specs, infos


def sweep_points(infos: dict[str, MergeInfo]) -> dict[str, dict[str, str]]:
    """{merge: {density: the point's merge name}} of every merge's density sweep."""
    points: dict[str, dict[str, str]] = {}
    for name, info in infos.items():
        if info.density:
            points.setdefault(info.configured, {})[info.density] = name
    return points
