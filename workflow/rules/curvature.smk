# Empirical Fisher in place of an expert's Adam moments (curvature.source or
# curvature.experts: empirical_fisher; FFG, OTA and trim_by fisher read it as moments), or
# for the merges that weigh with it (merges.<name>.moments: empirical_fisher)
if PLAN.fisher_needed:

    rule empirical_fisher:
        input:
            expert=layout.downloaded_model("{seed}", "{expert}"),
            calibration=lambda wc: PLAN.fisher_calibration(wc.seed, wc.expert) or [],
        output:
            layout.fisher_moments("{seed}", "{expert}"),
        log:
            layout.log("empirical_fisher", "{seed}", "{expert}"),
        benchmark:
            layout.benchmark("empirical_fisher", "{seed}", "{expert}")
        wildcard_constraints:
            expert=alternatives(PLAN.fisher_needed),
        params:
            # without a calibration text, a built expert's own task (loss on its answers)
            task=lambda wc: None if PLAN.fisher_calibration(wc.seed, wc.expert) else PLAN.task[wc.expert],
            samples=PLAN.curvature["samples"],
            batch_size=PLAN.curvature["batch_size"],
            seqlen=PLAN.curvature["seqlen"],
            seed=lambda wc: PLAN.curvature.get("seed", int(wc.seed)),
            n_eval=PLAN.n_eval if PLAN.outdir else 0,
            family=PLAN.family or "tiny",
        threads: 1
        resources:
            # the fp32 model and its fp32 accumulator, plus activations
            mem_mb=scaled(2000, 10000),
            runtime=scaled(10, 60),
            gpu=PLAN.gpus,
        conda:
            "../envs/otamerge.yaml"
        script:
            "../scripts/empirical_fisher.py"
