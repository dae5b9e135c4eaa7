# RegMean's Gram matrices: X^T X of every linear layer's inputs of each expert on its own
# text (the Hessians code the base's OBS importance uses, run on the expert)
if PLAN.gram_needed:

    if PLAN.outdir and "calibration" not in config["regmean"]:

        rule expert_text:
            output:
                layout.expert_text(PLAN.outdir, "{seed}", "{expert}"),
            log:
                layout.log("expert_text", "{seed}", "{expert}"),
            wildcard_constraints:
                expert=alternatives(PLAN.gram_needed),
            params:
                task=lambda wc: PLAN.task[wc.expert],
                examples=config["regmean"]["examples"],
                n_eval=PLAN.n_eval,
                seed=lambda wc: config["regmean"].get("seed", int(wc.seed)),
                family=PLAN.family,
            threads: 1
            resources:
                mem_mb=scaled(500, 0),
                runtime=scaled(5, 0),
            conda:
                "../envs/otamerge.yaml"
            script:
                "../scripts/expert_text.py"

    rule gram:
        input:
            model=layout.downloaded_model("{seed}", "{expert}"),
            calibration=lambda wc: PLAN.gram_text(wc.seed, wc.expert),
        output:
            directory(layout.gram_dir("{seed}", "{expert}")),
        log:
            layout.log("gram", "{seed}", "{expert}"),
        benchmark:
            layout.benchmark("gram", "{seed}", "{expert}")
        wildcard_constraints:
            expert=alternatives(PLAN.gram_needed),
        params:
            samples=config["regmean"]["samples"],
            seqlen=config["regmean"]["seqlen"],
            seed=lambda wc: config["regmean"].get("seed", int(wc.seed)),
        threads: 1
        resources:
            mem_mb=scaled(2000, 6000),
            runtime=scaled(10, 30),
            gpu=PLAN.gpus,
        conda:
            "../envs/otamerge.yaml"
        script:
            "../scripts/hessians.py"
