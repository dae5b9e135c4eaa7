# SparseGPT (OBS) importance: calibration Hessians of the base, once, reused by every
# expert and density; the importance from them (changing damping reruns only this)
if "sparsegpt" in config:

    rule hessians:
        input:
            base=BASE,
            calibration=config["sparsegpt"]["calibration"],
        output:
            directory("results/importance/hessians"),
        log:
            "logs/hessians/hessians.log",
        benchmark:
            "results/benchmarks/hessians/hessians.tsv"
        params:
            samples=config["sparsegpt"]["samples"],
            seqlen=config["sparsegpt"]["seqlen"],
            seed=config["sparsegpt"].get("seed", config["seed"]),
        threads: 1
        resources:
            mem_mb=scaled(2000, 6000),
            runtime=scaled(10, 30),
            gpu=GPUS,
        conda:
            "../envs/otamerge.yaml"
        script:
            "../scripts/hessians.py"


    rule sparsegpt_importance:
        input:
            base=BASE,
            hessians="results/importance/hessians",
        output:
            IMPORTANCE,
        log:
            "logs/sparsegpt_importance/importance.log",
        benchmark:
            "results/benchmarks/sparsegpt_importance/importance.tsv"
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
