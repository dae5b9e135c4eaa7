# SparseGPT (OBS) importance: calibration Hessians of each seed's base, once, reused by
# every expert and density; the importance from them (changing damping reruns only this)
if "sparsegpt" in config:

    rule hessians:
        input:
            model=layout.downloaded_model("{seed}", "base"),
            calibration=lambda wc: layout.per_seed(config["sparsegpt"]["calibration"], wc.seed),
        output:
            directory(layout.hessians_dir("{seed}")),
        log:
            layout.log("hessians", "{seed}", "hessians"),
        benchmark:
            layout.benchmark("hessians", "{seed}", "hessians")
        params:
            samples=config["sparsegpt"]["samples"],
            seqlen=config["sparsegpt"]["seqlen"],
            seed=lambda wc: config["sparsegpt"].get("seed", int(wc.seed)),
        threads: 1
        resources:
            mem_mb=scaled(2000, 6000),
            runtime=scaled(10, 30),
            gpu=PLAN.gpus,
        conda:
            "../envs/otamerge.yaml"
        script:
            "../scripts/hessians.py"


    rule sparsegpt_importance:
        input:
            base=layout.downloaded_model("{seed}", "base"),
            hessians=layout.hessians_dir("{seed}"),
        output:
            layout.importance_file("{seed}"),
        log:
            layout.log("sparsegpt_importance", "{seed}", "importance"),
        benchmark:
            layout.benchmark("sparsegpt_importance", "{seed}", "importance")
        params:
            damping=config["sparsegpt"]["damping"],
        threads: 1
        resources:
            mem_mb=scaled(2000, 4000),
            runtime=scaled(5, 20),
        conda:
            "../envs/otamerge.yaml"
        script:
            "../scripts/sparsegpt_importance.py"
