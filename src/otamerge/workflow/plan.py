"""The workflow's decisions, as values and plain functions of its validated config.

Which models, merges, sweep points and evaluations a run has; where each model and each
expert's curvature comes from; which densities a merge's FFG thresholds may take and
what its merge_config job reads; the cross-key checks that stop a run before any job;
and the final targets. common.smk builds one ``Plan(config)`` after schema validation
(which fills the schema's defaults) and the rules read it; nothing here needs Snakemake
or torch, so each decision is unit-tested directly (tests/test_plan.py).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from otamerge.names import EXPORTED_MOMENTS
from otamerge.ffg.densities import density_label
from otamerge.workflow import layout
from otamerge.workflow.checks import check_plan
from otamerge.workflow.merge_specs import FFG_METRICS, gram_experts, moments_kind
from otamerge.workflow.publish import lora_merges, publish_repos
from otamerge.workflow.seeds import config_seeds
from otamerge.workflow.subsets import ALL, expand_merges, sweep_points

FAMILY_SECTION = {"tiny": "demo", "pretrained": "pretrained"}


class Plan:
    """One run's decisions. Attributes are fixed at construction; methods answer per
    seed, model or merge. Raises ValueError, naming the keys, for a config whose keys
    disagree with each other."""

    def __init__(self, config: dict[str, Any], environ: Mapping[str, str] = os.environ):
        self.config = config
        # every seed runs the whole family; each job's path and params hold only its own seed
        self.seeds = config_seeds(config)
        self._read_family(config)
        self.experts = list(self.task)
        self.models = ["base", *self.experts]
        # one spelling per sweep point: 0.1 and 0.10 are one job
        self.densities = sorted({density_label(d) for d in config["ffg"]["densities"]}, key=float)
        self.metrics = config["ffg"]["metrics"]
        # the configured merges (null drops one), then those of subsets of the experts and
        # the points of density sweeps; merge_info says which experts each holds
        self.merges, self.merge_info = expand_merges(
            {m: s for m, s in config["merges"].items() if s is not None}, self.experts, config.get("subsets"),
            self.densities)
        self.backends = config["evaluation"]["backends"]
        # {merge: {density: point's merge name}}, and whether the builtin evaluator scores
        # the points on validation prompts (disjoint from the test prompts) for the density
        # a merge chooses itself (report, and thresholds.mode: merge)
        self.sweep_points = sweep_points(self.merge_info)
        self.validated = bool(self.sweep_points) and self.family is not None and "builtin" in self.backends
        thresholds = config["thresholds"]
        self.threshold_backend = thresholds["backend"]  # whose own-task scores choose automatic densities
        self.threshold_score = thresholds.get("score", "token_accuracy" if self.threshold_backend == "builtin" else None)
        self.sweep_score = self.threshold_score or "token_accuracy"  # what the sweep plots show (builtin scores)
        self.size_b = config["resources"]["model_params_b"]  # job sizes: billions of parameters per model
        self.gpus = config["resources"]["gpu"]
        # Adam's exp_avg_sq divided by 1 - beta2^t before any job reads it (off: the paper's raw moments)
        self.bias_correction = config["moments"]["bias_correction"]
        # the perplexity backend: name -> text file, and its window (None: the evaluator's default)
        self.perplexity = config["evaluation"].get("perplexity", {})
        self.perplexity_texts = self.perplexity.get("texts", {})
        self.published = publish_repos(config.get("publish"), list(self.merges), self.seeds)  # {(seed, merge): repo}
        self.lora = lora_merges(config.get("lora"), list(self.merges), self.seeds)
        self._read_curvature(config)
        # merges of all their experts; subset merges choose the same grafts (one expert's
        # density depends on its own scores only), so the graft rows and plots read these
        # (not the points of a density sweep, each at one density)
        self.ffg_merges = [m for m, spec in self.merges.items() if spec.get("ffg")
                           and self.merge_info[m].subset == ALL and self.merge_info[m].density is None]
        self.claim_merges = config["claims"]  # the merge each claim reads (the schema's defaults filled)
        check_plan(self, environ)

    def _read_family(self, config: dict[str, Any]) -> None:
        """The models the workflow builds itself, then "downloads" from disk: the tiny demo
        (family tiny) or experts fine-tuned from a real pretrained base (family pretrained,
        config/smollm2.yaml); without either, config.models names hub repos or local folders."""
        self.family = "tiny" if config.get("demo") else "pretrained" if config.get("pretrained") else None
        self.build = config[FAMILY_SECTION[self.family]] if self.family else None
        self.outdir = self.build["outdir"] if self.build else None
        self.n_eval = self.build["n_eval"] if self.build else 100  # held-out prompts per task of a built family
        if self.build:  # an expert set to null is dropped (a config merged over another can remove one)
            self.build["experts"] = {e: s for e, s in self.build["experts"].items() if s is not None}
            self.task = {e: spec["task"] for e, spec in self.build["experts"].items()}
        else:
            self.task = {e: spec.get("task") for e, spec in config["models"]["experts"].items()}

    def _read_curvature(self, config: dict[str, Any]) -> None:
        """Where each expert's curvature comes from: its optimizer's exp_avg_sq (adam) or an
        empirical Fisher estimated here (curvature.source, per expert curvature.experts); and
        the experts whose empirical Fisher some job reads: those, and the experts of merges
        that weigh with it (merges.<m>.moments: empirical_fisher, Fisher merging)."""
        self.curvature = config["curvature"]
        self.fisher_experts = [e for e in self.experts if self.curvature["experts"].get(
            e, self.curvature["source"]) == "empirical_fisher"]
        self.fisher_needed = sorted(set(self.fisher_experts) | {
            e for m, spec in self.merges.items() if moments_kind(spec) == "empirical_fisher"
            for e in self.merge_info[m].experts})
        # experts whose Gram matrices on their own text some merge reads (RegMean)
        self.gram_needed = sorted({e for m, spec in self.merges.items()
                                   for e in gram_experts(spec, self.merge_info[m].experts)})

    # -- where models and curvature come from ------------------------------------------

    def source(self, name: str, seed: int | str) -> dict[str, Any]:
        """Where model ``name`` of a seed comes from: the family's build for that seed, or
        the configured hub repo or local folder (``{seed}`` in its paths replaced)."""
        if self.outdir:
            if name == "base":  # a pretrained base is converted once, for every seed
                return {"source": layout.converted_base(self.outdir) if self.family == "pretrained"
                        else layout.demo_base(self.outdir, seed)}
            return {"source": layout.demo_expert(self.outdir, seed, name),
                    "preconditioner": EXPORTED_MOMENTS}
        spec = self.config["models"]["base"] if name == "base" else self.config["models"]["experts"][name]
        return {k: layout.per_seed(v, seed) if k in ("source", "preconditioner") else v for k, v in spec.items()}

    def moments_file(self, seed: int | str, expert: str, kind: str = "full") -> str:
        """The expert's exp_avg_sq as downloaded or bias-corrected (or its empirical Fisher,
        never bias-corrected), its rank-1 compression, or the base's OBS importance (the
        same file for every expert of a seed)."""
        if kind == "sparsegpt":
            return layout.importance_file(seed)
        if kind == "rank1":
            return layout.rank1_moments(seed, expert)
        if kind == "empirical_fisher" or expert in self.fisher_experts:
            return layout.fisher_moments(seed, expert)
        if self.bias_correction:
            return layout.corrected_moments(seed, expert)
        return self.downloaded_moments(seed, expert)

    @staticmethod
    def downloaded_moments(seed: int | str, expert: str) -> str:
        return layout.preconditioner(layout.downloaded_model(seed, expert))

    def moments_input(self, seed: int | str, expert: str, kind: str = "full") -> str:
        """What a job reading those moments depends on: downloaded moments live inside the
        expert's folder (a directory output), so the folder is the input."""
        path = self.moments_file(seed, expert, kind)
        return layout.downloaded_model(seed, expert) if path == self.downloaded_moments(seed, expert) else path

    def optimizer_override(self, expert: str) -> dict[str, Any]:
        """Adam's step count and beta2 for bias correction where the moments' metadata lacks them."""
        return {} if self.outdir else self.config["models"]["experts"][expert].get("optimizer", {})

    def fisher_calibration(self, seed: int | str, expert: str) -> str | None:
        """An expert's calibration text ({seed} and {expert} replaced), or None: a built
        family's experts default to their own task's examples."""
        path = self.curvature.get("calibration")
        return layout.per_expert(path, seed, expert) if path else None

    def gram_text(self, seed: int | str, expert: str) -> str:
        """The text an expert's Gram matrices are computed on: regmean.calibration ({seed}
        and {expert} replaced), else a built expert's own task's training examples."""
        path = self.config["regmean"].get("calibration")
        return layout.per_expert(path, seed, expert) if path else layout.expert_text(self.outdir, seed, expert)

    # -- merges and their thresholds ------------------------------------------------------

    def merge_experts(self, merge: str) -> list[str]:
        return list(self.merge_info[merge].experts)

    def chooses_by_merge(self, merge: str) -> bool:
        """Whether a merge takes the density its own sweep's merged models keep most with on
        validation prompts (thresholds.mode: merge, a merge with a density sweep)."""
        return self.config["thresholds"]["mode"] == "merge" and merge in self.sweep_points

    def validation_scores(self, seed: int | str, merge: str) -> list[str]:
        """Validation score files the merge-level choice reads: base, experts, the sweep's points."""
        return [layout.scores(seed, "validation", m) for m in self._validated_by(merge)]

    def _validated_by(self, merge: str) -> list[str]:
        """The models whose validation scores a merge's density choice compares."""
        return self.models + [layout.merge_name(p) for p in self.sweep_points[merge].values()]

    def validation_models(self) -> list[str]:
        """Every model the validation prompts score (none unless ``validated``)."""
        return list(dict.fromkeys(m for merge in self.sweep_points for m in self._validated_by(merge))) \
            if self.validated else []

    def fixed_density(self, expert: str, merge: str | None = None) -> str | None:
        """An expert's density in a merge: the merge's own (a point of its density sweep),
        the configured one, or None where it is chosen (per expert, or by the merge)."""
        if merge and self.merge_info[merge].density:
            return self.merge_info[merge].density
        if merge and self.chooses_by_merge(merge):
            return None
        fixed = self.config["thresholds"]["fixed"]
        if expert in fixed:
            return density_label(fixed[expert])
        if self.config["thresholds"]["mode"] == "fixed":
            raise ValueError(f"thresholds.mode is fixed but thresholds.fixed has no density for {expert}")
        return None

    def candidate_densities(self, expert: str, merge: str | None = None) -> list[str]:
        """The sweep points an expert's FFG threshold in a merge may come from: its fixed
        density, or every swept density when it is chosen automatically."""
        d = self.fixed_density(expert, merge)
        return [d] if d else self.densities

    def ffg_points(self, merge: str) -> list[tuple[str, str]]:
        """(expert, density) of every candidate graft of a merge using FFG."""
        return [(e, d) for e in self.merge_experts(merge) for d in self.candidate_densities(e, merge)]

    def merge_config_inputs(self, seed: int | str, merge: str) -> dict[str, list[str] | str]:
        """Experts and moments; with FFG, the sweep points the thresholds are read from and
        the scores (or validation scores) that choose among them. Lists for the DAG only:
        the job finds each file by name in merge_config_params."""
        spec, experts = self.merges[merge], self.merge_experts(merge)
        params = self.merge_config_params(seed, merge)
        inputs: dict[str, Any] = {"experts": list(params["experts"].values()),
                                  "base": layout.downloaded_model(seed, "base")}
        kind = moments_kind(spec)
        if kind:
            inputs["moments"] = [self.moments_input(seed, e, kind) for e in experts]
        if "grams" in params:
            inputs["grams"] = list(params["grams"].values())
        if spec.get("ffg"):
            inputs["sweeps"] = [point["graft"] for point in params["thresholds"]["points"]]
            if self.chooses_by_merge(merge):
                inputs["validation"] = self.validation_scores(seed, merge)
            else:
                chosen = [e for e in experts if not self.fixed_density(e, merge)]
                backend = self.threshold_backend
                inputs["scores"] = [layout.scores(seed, backend, layout.graft_name(e, spec["ffg"], d))
                                    for e in chosen for d in self.densities] + [
                    layout.scores(seed, backend, e) for e in chosen]
        return inputs

    def merge_config_params(self, seed: int | str, merge: str) -> dict[str, Any]:
        """The merge spec and only the settings its thresholds depend on."""
        spec, experts = self.merges[merge], self.merge_experts(merge)
        kind = moments_kind(spec)
        params = {"spec": spec, "experts": {e: layout.downloaded_model(seed, e) for e in experts},
                  "moments": {e: self.moments_file(seed, e, kind) for e in experts} if kind else {}}
        grams = gram_experts(spec, experts)
        if grams:
            params["grams"] = {e: layout.gram_dir(seed, e) for e in grams}
        if spec.get("ffg"):
            fixed = {e: self.fixed_density(e, merge) for e in experts}
            params["thresholds"] = {
                "fixed": {e: d for e, d in fixed.items() if d},
                "retention": self.config["thresholds"]["retention"],
                "score": self.threshold_score,
                "tasks": {e: self.task[e] for e in experts},
                "points": [{"expert": e, "density": d, "graft": layout.graft_dir(seed, e, spec["ffg"], d)}
                           for e, d in self.ffg_points(merge)],
            }
            if self.chooses_by_merge(merge):  # the density sweep's point merges, chosen among by score
                params["thresholds"]["by_merge"] = self.sweep_points[merge]
        return params

    def threshold_files(self) -> dict[str, str]:
        """Every seed's thresholds.csv of each merge of all experts with FFG -> that merge."""
        return {layout.merge_thresholds(s, m): m for s in self.seeds for m in self.ffg_merges}

    def merge_infos(self) -> dict[str, dict[str, Any]]:
        """What the retention table needs of each merge, as plain values (job params)."""
        return {m: {"configured": i.configured, "subset": i.subset, "experts": list(i.experts), "density": i.density}
                for m, i in self.merge_info.items()}

    # -- evaluation -------------------------------------------------------------------------

    def model_tasks(self, backend: str, model: str) -> list[str]:
        """A backend's tasks for a model: every task, but only its expert's own for a sweep
        point where evaluation.sweep_tasks is own (what the density choice and the sweep
        table read; minutes saved per graft on a real model)."""
        if layout.is_graft(model) and self.config["evaluation"]["sweep_tasks"] == "own":
            return [self.task[layout.graft_expert(model)]]
        return self.config["evaluation"]["tasks"] if backend == "builtin" else self.backend_tasks(backend)

    def backend_tasks(self, backend: str) -> list[str]:
        """An external evaluator's tasks: evaluation.<backend>.tasks, else evaluation.tasks."""
        return self.config["evaluation"].get(backend, {}).get("tasks", self.config["evaluation"]["tasks"])

    def backend_settings(self, backend: str) -> dict[str, Any]:
        """How an external evaluator runs: evaluation.<backend> without its tasks and keys."""
        return {k: v for k, v in self.config["evaluation"].get(backend, {}).items() if k not in ("tasks", "api_keys")}

    def all_tasks(self) -> list[str]:
        """Every backend's tasks, in the order the tables show them."""
        ev = self.config["evaluation"]
        return list(dict.fromkeys(ev["tasks"] + self.backend_tasks("olmes") + self.backend_tasks("lm_eval")))

    def evaluated(self, models: list[str], backends: list[str] | None = None) -> list[str]:
        """Score files of these models, every seed."""
        return [layout.scores(s, b, m) for s in self.seeds for b in (self.backends if backends is None else backends)
                for m in models]

    def perplexity_files(self, seed: int | str) -> dict[str, str]:
        """The perplexity backend's texts of a seed by name ({seed} in their paths replaced)."""
        return {name: layout.per_seed(f, seed) for name, f in self.perplexity_texts.items()}

    def sweep_models(self) -> list[str]:
        return [layout.graft_name(e, m, d) for e in self.experts for m in self.metrics for d in self.densities]

    def graft_candidates(self) -> list[str]:
        """Sweep points that may be an expert's chosen graft (model names): where densities
        are chosen automatically every point of the merges' FFG metrics (the builtin
        evaluator scores them all anyway), else the fixed one."""
        return sorted({layout.graft_name(e, self.merges[m]["ffg"], d) for m in self.ffg_merges
                       for e, d in self.ffg_points(m)})

    def graft_scores(self) -> list[str]:
        """Score files of candidate grafts. The backend the automatic densities are chosen
        by (thresholds.backend) scores every candidate; the other external evaluators,
        minutes per model, only grafts at fixed densities: an automatic choice is known
        only once the sweep is scored."""
        candidates = self.graft_candidates()
        fixed = [p for p in candidates if self.fixed_density(layout.graft_expert(p))]
        every = [b for b in self.backends if b in ("builtin", self.threshold_backend)]
        return (self.evaluated(candidates, every)
                + self.evaluated(fixed, [b for b in self.backends if b not in every]))
