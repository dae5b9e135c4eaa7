# the demo's own models: only with a demo section in the config
if DEMO:

    rule demo_base:
        output:
            directory(f"{DEMO}/base"),
        log:
            "logs/demo_base/base.log",
        benchmark:
            "results/benchmarks/demo_base/base.tsv"
        params:
            seed=config["seed"],
            n_eval=config["demo"]["n_eval"],
            torch_threads=config["demo"]["threads"],
            arch=config["demo"].get("arch", {}),
            settings=config["demo"]["base"],
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
            f"{DEMO}/base",
        output:
            directory(f"{DEMO}/experts/{{expert}}"),
        log:
            "logs/demo_expert/{expert}.log",
        benchmark:
            "results/benchmarks/demo_expert/{expert}.tsv"
        params:
            seed=config["seed"],
            n_eval=config["demo"]["n_eval"],
            torch_threads=config["demo"]["threads"],
            task=lambda wc: config["demo"]["experts"][wc.expert]["task"],
            settings=expert_settings,
        threads: config["demo"]["threads"]
        resources:
            mem_mb=scaled(2000, 0),
            runtime=scaled(30, 0),
        conda:
            "../envs/otamerge.yaml"
        script:
            "../scripts/demo_expert.py"


    rule demo_texts:
        output:
            calibration=f"{DEMO}/text/calibration.txt",
            heldout=f"{DEMO}/text/heldout.txt",
        log:
            "logs/demo_texts/texts.log",
        params:
            seed=config["seed"],
            n_eval=config["demo"]["n_eval"],
            n_examples=2000,
        threads: 1
        resources:
            mem_mb=scaled(500, 0),
            runtime=scaled(5, 0),
        conda:
            "../envs/otamerge.yaml"
        script:
            "../scripts/demo_texts.py"
