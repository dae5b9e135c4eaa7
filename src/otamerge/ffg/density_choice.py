"""Threshold extraction: pick each expert's FFG density and put its threshold into a
merge configuration.

A density is either fixed per expert, or chosen automatically: the smallest swept
density whose grafted model keeps at least ``retention`` (e.g. 0.95) of the expert's own
score on its own task (the score at density 1, where the graft is the expert itself).
Where no swept density keeps that much, the choice is density 1: the whole expert, with
no FFG mask (threshold None).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from otamerge.errors import OtaMergeError
from otamerge.ffg.densities import check_density
from otamerge.names import STATISTICS


def read_statistics(path: str | Path) -> dict:
    """A statistics.json, with the fields threshold extraction needs checked."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OtaMergeError(f"{path}: cannot read statistics ({exc})") from None
    missing = [k for k in ("density", "metric", "threshold", "kept", "total", "achieved_density") if k not in data]
    if missing:
        raise OtaMergeError(f"{path}: statistics.json lacks {', '.join(missing)}")
    return data


def sweep_statistics(sweep_dir: str | Path) -> dict[float, dict]:
    """density -> statistics of every ``<density>/statistics.json`` under ``sweep_dir``."""
    found = {}
    for path in sorted(Path(sweep_dir).glob(f"*/{STATISTICS}")):
        stats = read_statistics(path)
        found[float(stats["density"])] = stats
    if not found:
        raise OtaMergeError(f"{sweep_dir}: no */{STATISTICS} found")
    return found


def choose_density(expert: str, stats: dict[float, dict], fixed: float | None = None,
                   scores: dict[float, float] | None = None, retention: float = 0.95) -> dict[str, Any]:
    """The chosen density of one expert, its threshold, and why (one table row)."""
    if fixed is not None:
        d = check_density(fixed)
        if d not in stats:
            raise OtaMergeError(f"expert {expert}: density {d:g} was not swept (swept: "
                                f"{', '.join(f'{x:g}' for x in sorted(stats))})")
        reason, score, full = "fixed in config", (scores or {}).get(d), (scores or {}).get(1.0)
    else:
        if not scores or 1.0 not in scores:
            raise OtaMergeError(f"expert {expert}: automatic choice needs the score at density 1 (the expert)")
        full = scores[1.0]
        ok = [x for x in sorted(stats) if x in scores and scores[x] >= retention * full]
        if not ok:
            return {"expert": expert, "mode": "auto", "density": 1.0, "threshold": None, "achieved_density": 1.0,
                    "metric": next(iter(stats.values()))["metric"], "score": full, "expert_score": full,
                    "reason": f"no swept density keeps >= {retention:g} of the expert's own score "
                              f"({full:.4g}): the whole expert, no FFG mask"}
        d = ok[0]
        score = scores[d]
        reason = (f"smallest density keeping >= {retention:g} of the expert's own score "
                  f"({score:.4g} vs {full:.4g})")
    s = stats[d]
    return {"expert": expert, "mode": "fixed" if fixed is not None else "auto", "density": d,
            "threshold": s["threshold"], "achieved_density": s["achieved_density"], "metric": s["metric"],
            "score": score, "expert_score": full, "reason": reason}


def thresholds_config(template: dict[str, Any], stats: dict[str, dict[float, dict]],
                      fixed: dict[str, float | None], scores: dict[str, dict[float, float]], retention: float,
                      refs: dict[str, str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Threshold extraction, for ``otamerge thresholds`` and the workflow's merge_config rule:
    each expert's density chosen from its sweep ``stats`` (fixed, or automatic from its own
    ``scores``), and the template with their thresholds. ``refs`` maps an expert to its
    model in the template (default: the same name). Returns (config, one row per expert)."""
    rows = [choose_density(e, stats[e], fixed.get(e), scores.get(e), retention) for e in stats]
    refs = refs or {e: e for e in stats}
    return with_thresholds(template, {refs[r["expert"]]: r["threshold"] for r in rows}), rows


def with_thresholds(template: dict[str, Any], thresholds: dict[str, float | None]) -> dict[str, Any]:
    """A copy of a merge config with ``precond_threshold`` set on the named models (None:
    that model keeps every edit, no mask)."""
    cfg = copy.deepcopy(template)
    refs = [m.get("model") if isinstance(m, dict) else m for m in cfg.get("models") or []]
    for ref in thresholds:
        if ref not in refs:
            raise OtaMergeError(f"merge template has no model {ref!r} (models: {', '.join(map(str, refs))})")
    models = []
    for entry in cfg["models"]:
        entry = {"model": entry} if not isinstance(entry, dict) else entry
        if thresholds.get(entry["model"]) is not None:
            entry.setdefault("parameters", {})["precond_threshold"] = float(thresholds[entry["model"]])
        models.append(entry)
    cfg["models"] = models
    return cfg
