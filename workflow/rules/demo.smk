# the demo's own models: only with a demo section in the config; one build per seed
if PLAN.family == "tiny":

    rule demo_base:
        output:
            directory(layout.demo_base(PLAN.outdir, "{seed}")),
        log:
            layout.log("demo_base", "{seed}", "base"),
        benchmark:
            layout.benchmark("demo_base", "{seed}", "base")
        params:
            seed=lambda wc: int(wc.seed),
            n_eval=config["demo"]["n_eval"],
            torch_threads=config["demo"]["threads"],
            arch=config["demo"].get("arch", {}),
            settings=config["demo"]["base"],
            base_data=base_data(config["demo"]),
        threads: config["demo"]["threads"]
        resources:
            mem_mb=scaled(2000, 0),
            runtime=scaled(30, 0),
        conda:
            "../envs/otamerge.yaml"
        script:
            "../scripts/demo_base.py"


    rule demo_expert:
        input:
            layout.demo_base(PLAN.outdir, "{seed}"),
        output:
            directory(layout.demo_expert(PLAN.outdir, "{seed}", "{expert}")),
        log:
            layout.log("demo_expert", "{seed}", "{expert}"),
        benchmark:
            layout.benchmark("demo_expert", "{seed}", "{expert}")
        params:
            seed=lambda wc: int(wc.seed),
            n_eval=config["demo"]["n_eval"],
            torch_threads=config["demo"]["threads"],
            task=lambda wc: config["demo"]["experts"][wc.expert]["task"],
            settings=get_expert_settings,
            base_data=base_data(config["demo"]),
        threads: config["demo"]["threads"]
        resources:
            mem_mb=scaled(2000, 0),
            runtime=scaled(30, 0),
        conda:
            "../envs/otamerge.yaml"
        script:
            "../scripts/demo_expert.py"


# the calibration and held-out texts of a built family's tasks (SparseGPT's Hessians, perplexity)
if PLAN.outdir:

    rule demo_texts:
        output:
            calibration=layout.demo_text(PLAN.outdir, "{seed}", "calibration"),
            heldout=layout.demo_text(PLAN.outdir, "{seed}", "heldout"),
        log:
            layout.log("demo_texts", "{seed}", "texts"),
        params:
            seed=lambda wc: int(wc.seed),
            n_eval=PLAN.n_eval,
            n_examples=2000,
            family=PLAN.family,
        threads: 1
        resources:
            mem_mb=scaled(500, 0),
            runtime=scaled(5, 0),
        conda:
            "../envs/otamerge.yaml"
        script:
            "../scripts/demo_texts.py"
