# Empirical Fisher in place of an expert's Adam moments (curvature.source or
# curvature.experts: empirical_fisher; FFG, OTA and trim_by fisher read it as moments), or
# for the merges that weigh with it (merges.<name>.moments: empirical_fisher)
if FISHER_NEEDED:

    rule empirical_fisher:
        input:
            expert=layout.model_dir("{seed}", "{expert}"),
            calibration=lambda wc: fisher_calibration(wc.seed, wc.expert) or [],
        output:
            layout.fisher_moments("{seed}", "{expert}"),
        log:
            layout.log("empirical_fisher", "{seed}", "{expert}"),
        benchmark:
            layout.benchmark("empirical_fisher", "{seed}", "{expert}")
        wildcard_constraints:
            expert=alternatives(FISHER_NEEDED),
        params:
            # without a calibration text, a built expert's own task (loss on its answers)
            task=lambda wc: None if fisher_calibration(wc.seed, wc.expert) else TASK[wc.expert],
            samples=CURVATURE.get("samples", 1024),
            batch_size=CURVATURE.get("batch_size", 1),
            seqlen=CURVATURE.get("seqlen", 128),
            seed=lambda wc: CURVATURE.get("seed", int(wc.seed)),
            n_eval=N_EVAL if DEMO else 0,
            family=FAMILY or "tiny",
        threads: 1
        resources:
            # the fp32 model and its fp32 accumulator, plus activations
            mem_mb=scaled(2000, 10000),
            runtime=scaled(10, 60),
            gpu=GPUS,
        conda:
            "../envs/otamerge.yaml"
        script:
            "../scripts/empirical_fisher.py"
