"""Every merge method as a config sees it, declared once and without torch: its parameters,
whether it reads the base, and when it reads curvature.

The engine registers one per-tensor function against each name (``methods/registry.py``);
the merge-config parser and the workflow read this table alone, so planning a workflow
never imports torch. Adding a method touches this table, its module and the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from otamerge.errors import OtaMergeError
from otamerge.ffg import SALIENCIES

REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """A parameter of a merge method. ``per_model`` parameters may be set for each model
    (a model's value overrides the global one, as in mergekit)."""

    name: str
    default: Any = REQUIRED
    per_model: bool = False
    kind: type = float
    choices: tuple = ()


@dataclass(frozen=True)
class MethodSpec:
    """base: "required", "optional" or "ignored" (the base model is then just not used).
    curvature: "always" (OTA's weights), "trim_by" (TIES-family trimming when ``trim_by`` is
    fisher or sparsegpt) or "never"."""

    name: str
    params: tuple[Param, ...]
    base: str = "required"
    curvature: str = "never"
    description: str = ""

    @property
    def per_model(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if p.per_model)

    def reads_moments(self, params: dict[str, Any], model_params: list[dict[str, Any]]) -> bool:
        """Whether each model needs a ``preconditioner_path``, given the resolved parameters."""
        if self.curvature == "always":
            return True
        return (self.curvature == "trim_by" and params.get("trim_by", "magnitude") != "magnitude"
                and sparsifies(model_params))


def sparsifies(model_params: list[dict[str, Any]]) -> bool:
    """Whether a task-arithmetic merge drops entries: some model's density is below 1."""
    return any(p.get("density", 1.0) < 1 for p in model_params)


# --- the task-arithmetic family, as mergekit 0.1.5 defines it ---
TRIM_BY = ("magnitude", "fisher", "sparsegpt")
_COMMON = (
    Param("weight", per_model=True),
    Param("density", 1.0, per_model=True),
    Param("int8_mask", False, kind=bool),  # accepted for mergekit configs; masks are exact anyway
    Param("lambda", 1.0),
)
# trimming by curvature: per model, its exp_avg_sq (fisher) or the base's OBS importance file
_TRIM = (Param("trim_by", "magnitude", kind=str, choices=TRIM_BY),
         Param("preconditioner_path", None, per_model=True, kind=str))
# breadcrumbs_compat: fork reproduces the paper's fork, which resets to the base every tensor
# with int(gamma * n) == 0 (sparsify.breadcrumbs); mergekit 0.1.5's definition is the default
_GAMMA = (Param("gamma", 0.01, per_model=True),
          Param("breadcrumbs_compat", "mergekit", kind=str, choices=("mergekit", "fork")))
# DELLA: keep probabilities from density - epsilon (smallest |delta| of a row) to density + epsilon
_EPSILON = (Param("epsilon", 0.15, per_model=True),)


def _task_vectors(name: str, normalize: bool, rescale: bool, description: str, extra: tuple[Param, ...] = (),
                  ranked: bool = False) -> MethodSpec:
    """ranked: drops by rank of an importance (TIES, breadcrumbs), which curvature may give;
    DARE and DELLA drop at random."""
    return MethodSpec(
        name, _COMMON + (Param("normalize", normalize, kind=bool), Param("rescale", rescale, kind=bool)) + extra
        + (_TRIM if ranked else ()),
        curvature="trim_by" if ranked else "never", description=description)


OTA_MODES = ("precond", "linear", "ties")
_OTA = (
    Param("preconditioner_path", per_model=True, kind=str),
    Param("precond_threshold", None, per_model=True),
    Param("scaling_factor", 1.0, per_model=True),
    Param("rank1_approx", False, per_model=True, kind=bool),
    Param("rank", None, per_model=True, kind=int),
    # accepted and unused, as in the paper's fork: its OTA never reads `weight` (the
    # configs call it a fallback, but a preconditioner that fails to load is an error)
    Param("weight", 1.0, per_model=True),
    Param("epsilon", 1e-8),
    Param("power", 0.5),
    Param("normalise", "none", kind=str, choices=("none", "global")),
    Param("fallback_to_base", False, kind=bool),
    Param("rescale", False, kind=bool),
    Param("approximate_norm", False, kind=bool),
    Param("rescale_relative_threshold", 1e-6),
    Param("masked_task_vector_merge_method", "precond", kind=str, choices=OTA_MODES),
    Param("ties_density", None),
)

_SPECS = (
    MethodSpec("linear", (Param("weight", per_model=True), Param("normalize", True, kind=bool)), base="ignored",
               description="weighted average of the listed models"),
    _task_vectors("task_arithmetic", False, False, "base + sum of weighted task vectors"),
    _task_vectors("ties", True, False, "top-k by magnitude, sign election, disjoint mean", ranked=True),
    _task_vectors("dare_ties", False, True, "random drop with L1 rescale, sign election"),
    _task_vectors("dare_linear", False, True, "random drop with L1 rescale"),
    _task_vectors("breadcrumbs", False, False, "drop outliers and small entries", _GAMMA, ranked=True),
    _task_vectors("breadcrumbs_ties", False, False, "breadcrumbs then sign election", _GAMMA, ranked=True),
    MethodSpec("multislerp", (Param("weight", per_model=True), Param("normalize_weights", True, kind=bool),
                              Param("eps", 1e-8)), base="optional",
               description="barycentric spherical interpolation of the models (or task vectors)"),
    MethodSpec("slerp", (Param("t"), Param("dot_threshold", 0.9995), Param("eps", 1e-8)),
               description="spherical interpolation of the base and one other model, tensor by tensor"),
    MethodSpec("nuslerp", (Param("weight", per_model=True), Param("nuslerp_row_wise", False, kind=bool),
                           Param("nuslerp_flatten", True, kind=bool)), base="optional",
               description="spherical interpolation of two models (or task vectors) at t = w_1 / (w_0 + w_1)"),
    MethodSpec("nearswap", (Param("t"),),
               description="the base, moved to the other model where they differ by at most t"),
    MethodSpec("model_stock", (Param("filter_wise", False, kind=bool),),
               description="the models' average pulled towards the base by the angle between them (Model Stock)"),
    MethodSpec("karcher", (Param("max_iter", 10, kind=int), Param("tol", 1e-5)), base="ignored",
               description="the models' weighted mean on the sphere (Karcher mean), at their mean norm"),
    MethodSpec("passthrough", (Param("scale", None, per_model=True),), base="ignored",
               description="one model's tensors as they are, or times its scale"),
    MethodSpec("ram", (Param("epsilon", 1e-5),),
               description="entries one model changes taken whole, entries several change averaged over them (RAM)"),
    MethodSpec("ramplus_tl", (Param("r", 0.1), Param("alpha", 0.2), Param("epsilon", 1e-5)),
               description="RAM with each model's unique entries scaled up by how much it shares (RAM+, tensor-local)"),
    MethodSpec("arcee_fusion", (),
               description="the other model's changes at the entries of outlying importance (Arcee Fusion)"),
    _task_vectors("della", True, True, "magnitude-ranked random drop (MAGPRUNE), sign election", _EPSILON),
    _task_vectors("della_linear", False, True, "magnitude-ranked random drop (MAGPRUNE)", _EPSILON),
    MethodSpec("sce", (
        Param("select_topk", 1.0),
        Param("int8_mask", False, kind=bool),  # accepted for mergekit configs; masks are exact anyway
        Param("weight", 1.0, per_model=True),  # accepted and unused, as by mergekit 0.1.5
        Param("density", 1.0, per_model=True),  # accepted and unused, as by mergekit 0.1.5
    ), description="top-variance selection, mean-square weights, sign election"),
    MethodSpec("tsv_m", (Param("alpha", 1.0),),
               description="each task vector's top singular vectors, orthonormalised together (TSV-M)"),
    MethodSpec("iso_c", (Param("scaling_factor", 1.0),),
               description="the task vectors' sum with a flat singular spectrum (Iso-C)"),
    MethodSpec("iso_cts", (Param("scaling_factor", 1.0), Param("common_space_fraction", 0.8)),
               description="Iso-C in a common subspace plus each task's own directions (Iso-CTS)"),
    MethodSpec("regmean", (Param("gram_path", per_model=True, kind=str), Param("reduce_non_diagonal_ratio", 1.0)),
               base="ignored", description="per linear layer the least-squares merge on each model's own inputs (RegMean)"),
    MethodSpec("ota", _OTA, base="optional", curvature="always",
               description="curvature-weighted merge with FFG masks (OTA+FFG)"),
)
CATALOG: dict[str, MethodSpec] = {s.name: s for s in _SPECS}

# ``merge_method: ffg``, the paper's configs/FFG: not a merge but one expert grafted onto the
# base at a density, exactly the graft ``otamerge ffg`` writes (merge.merge_file runs it)
GRAFT = MethodSpec("ffg", (Param("density"), Param("metric", "fisher", kind=str, choices=SALIENCIES),
                           Param("preconditioner_path", None, per_model=True, kind=str)),
                   description="one expert grafted onto the base at a density (Fast Fisher Grafting)")


# accept a per-model density, as mergekit 0.1.5 does, and drop nothing by it
_DENSITY_UNUSED = ("task_arithmetic", "sce")


def sweeps_density(method: str) -> bool:
    """Whether a method's per-model ``density`` changes what it merges, so that merges at
    several densities differ (task_arithmetic and sce accept one and ignore it)."""
    return "density" in CATALOG[method].per_model and method not in _DENSITY_UNUSED


def method_spec(name: str) -> MethodSpec:
    if name == GRAFT.name:
        return GRAFT
    try:
        return CATALOG[name]
    except KeyError:
        raise OtaMergeError(f"unknown merge_method {name!r}; known: {', '.join(sorted(CATALOG))}, "
                            f"{GRAFT.name}") from None
