rule summary:
    input:
        expand(
            "results/evaluation/{backend}/{model}.json",
            backend=config["evaluation"]["backends"],
            model=MODELS,
        ),
    output:
        scores="results/summary/scores.csv",
        table=report(
            "results/summary/accuracy.md",
            caption="../report/accuracy.rst",
            category="Summary",
        ),
        matrix="results/summary/accuracy.json",
    log:
        "logs/summary/summary.log",
    params:
        tasks=config["evaluation"]["tasks"],
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/summary.py"
