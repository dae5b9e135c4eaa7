"""From the workflow config's merge specs to mergekit-style merge configs, and the
own-task score tables that automatic FFG density selection reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from otamerge.errors import OtaMergeError
from otamerge.methods.catalog import CATALOG

if TYPE_CHECKING:
    import pandas as pd


# FFG metric (a sweep folder's name, a merge's ``ffg``) -> (the saliency ``otamerge ffg``
# computes, the curvature file it reads): fisher_rank1 is fisher from rank-1 moments
FFG_METRICS: dict[str, tuple[str, str | None]] = {
    "fisher": ("fisher", "full"), "fisher_rank1": ("fisher", "rank1"),
    "magnitude": ("magnitude", None), "sparsegpt": ("sparsegpt", "sparsegpt"),
}


def moments_kind(spec: dict[str, Any]) -> str | None:
    """The curvature file each expert of a merge spec needs: its moments (OTA, trim_by
    fisher: ``full`` or ``rank1``; an OTA merge masked by ``ffg: fisher_rank1`` weighs with
    the rank-1 moments its masks come from), the base's OBS importance (trim_by sparsegpt:
    ``sparsegpt``), or None."""
    trim = (spec.get("parameters") or {}).get("trim_by", "magnitude")
    reads = CATALOG[spec["method"]].curvature
    if reads == "always" or (reads == "trim_by" and trim == "fisher"):
        return spec.get("moments") or (FFG_METRICS[spec["ffg"]][1] if spec.get("ffg") else "full")
    return "sparsegpt" if reads == "trim_by" and trim == "sparsegpt" else None


def gram_experts(spec: dict[str, Any], experts: Iterable[str]) -> list[str]:
    """The experts of a merge spec whose Gram matrices the workflow computes: those of a
    method reading a per-model ``gram_path`` (RegMean) that the spec does not give them."""
    if "gram_path" not in CATALOG[spec["method"]].per_model or "gram_path" in (spec.get("model_parameters") or {}):
        return []
    given = spec.get("expert_parameters") or {}
    return [e for e in experts if "gram_path" not in (given.get(e) or {})]


def merge_template(spec: dict[str, Any], experts: dict[str, str], base_dir: str,
                   moments: dict[str, str] | None = None, grams: dict[str, str] | None = None) -> dict[str, Any]:
    """A merge config (as `otamerge merge` reads it) for one merge spec of the workflow.

    experts: name -> model folder; moments: name -> moments or importance file (OTA, and
    trimming by curvature); grams: name -> its Gram matrices (RegMean; gram_experts).
    Every expert gets the spec's ``model_parameters``, then its own ``expert_parameters``,
    its fixed FFG threshold (``thresholds``) as ``precond_threshold``, its file as
    ``preconditioner_path`` where the method reads one and its ``gram_path``.
    """
    needs = moments_kind(spec) is not None
    per_expert, thresholds = spec.get("expert_parameters") or {}, spec.get("thresholds") or {}
    models = []
    for name, folder in experts.items():
        params = {**(spec.get("model_parameters") or {}), **(per_expert.get(name) or {})}
        if thresholds.get(name) is not None:
            params["precond_threshold"] = float(thresholds[name])
        if needs:
            if not moments or name not in moments:
                raise OtaMergeError(f"merge {spec}: expert {name} has no moments file")
            params["preconditioner_path"] = moments[name]
        if grams and name in grams:
            params["gram_path"] = grams[name]
        models.append({"model": folder, "parameters": params})
    cfg: dict[str, Any] = {"merge_method": spec["method"], "models": models,
                           "parameters": dict(spec.get("parameters") or {}),
                           "tokenizer_source": spec.get("tokenizer_source", "base")}
    if spec.get("dtype"):  # else the models' stored dtype (arithmetic is fp32 either way)
        cfg["dtype"] = spec["dtype"]
    if spec.get("base", True) and CATALOG[spec["method"]].base != "ignored":
        cfg["base_model"] = base_dir
    elif cfg["tokenizer_source"] == "base":  # no base: the first expert's tokenizer
        cfg["tokenizer_source"] = models[0]["model"]
    return cfg


def own_task_scores(rows_files: Iterable[str | Path], model_to_point: dict[str, tuple[str, float]],
                    tasks: dict[str, str], metric: str) -> pd.DataFrame:
    """Columns expert, density, score: each evaluated model's score on its expert's own task.

    model_to_point maps a model name of the score rows to (expert, density); the expert
    itself is density 1.
    """
    import pandas as pd  # here, not at the top: the workflow imports this module to build its DAG

    out = []
    for path in rows_files:
        for row in json.loads(Path(path).read_text()):
            point = model_to_point.get(row["model"])
            if point and row["metric"] == metric and row["task"] == tasks[point[0]]:
                out.append({"expert": point[0], "density": point[1], "score": row["score"]})
    return pd.DataFrame(out, columns=["expert", "density", "score"]).sort_values(["expert", "density"])
