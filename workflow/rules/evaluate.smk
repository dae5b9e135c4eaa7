rule evaluate_builtin:
    input:
        model_dir,
    output:
        "results/evaluation/builtin/{model}.json",
    log:
        "logs/evaluate_builtin/{model}.log",
    benchmark:
        "results/benchmarks/evaluate_builtin/{model}.tsv"
    params:
        tasks=config["evaluation"]["tasks"],
        n=config.get("demo", {}).get("n_eval", 100),
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=scaled(2000, 4000),
        runtime=scaled(10, 5),
        gpu=GPUS,
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/evaluate_builtin.py"


rule evaluate_olmes:
    input:
        model_dir,
    output:
        scores="results/evaluation/olmes/{model}.json",
        raw=directory("results/evaluation/olmes_raw/{model}"),
    log:
        "logs/evaluate_olmes/{model}.log",
    benchmark:
        "results/benchmarks/evaluate_olmes/{model}.tsv"
    params:
        tasks=backend_tasks("olmes"),
        settings=backend_settings("olmes"),
    threads: 4
    resources:
        mem_mb=scaled(8000, 4000),
        runtime=scaled(60, 60),
        gpu=GPUS,
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/evaluate_olmes.py"


rule evaluate_lm_eval:
    input:
        model_dir,
    output:
        scores="results/evaluation/lm_eval/{model}.json",
        raw=directory("results/evaluation/lm_eval_raw/{model}"),
    log:
        "logs/evaluate_lm_eval/{model}.log",
    benchmark:
        "results/benchmarks/evaluate_lm_eval/{model}.tsv"
    params:
        tasks=backend_tasks("lm_eval"),
        settings=backend_settings("lm_eval"),
        n=config.get("demo", {}).get("n_eval", 100),
        seed=config["seed"],
    threads: 2
    resources:
        mem_mb=scaled(4000, 4000),
        runtime=scaled(20, 60),
        gpu=GPUS,
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/evaluate_lm_eval.py"


rule evaluate_perplexity:
    input:
        model=model_dir,
        texts=list(PERPLEXITY_TEXTS.values()),
    output:
        "results/evaluation/perplexity/{model}.json",
    log:
        "logs/evaluate_perplexity/{model}.log",
    benchmark:
        "results/benchmarks/evaluate_perplexity/{model}.tsv"
    params:
        texts=PERPLEXITY_TEXTS,
        max_length=config["evaluation"].get("perplexity", {}).get("max_length"),
        stride=config["evaluation"].get("perplexity", {}).get("stride"),
    threads: 1
    resources:
        mem_mb=scaled(2000, 4000),
        runtime=scaled(10, 10),
        gpu=GPUS,
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/evaluate_perplexity.py"
