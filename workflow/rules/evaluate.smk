rule evaluate_builtin:
    input:
        model_input,
    output:
        layout.scores("{seed}", "builtin", "{model}"),
    log:
        layout.log("evaluate_builtin", "{seed}", "{model}"),
    benchmark:
        layout.benchmark("evaluate_builtin", "{seed}", "{model}")
    params:
        tasks=lambda wc: model_tasks("builtin", wc.model),
        n=N_EVAL,
        family=FAMILY or "tiny",
        # the seed's held-out prompts: the ones its demo build kept out of training
        seed=lambda wc: int(wc.seed),
    threads: 1
    resources:
        mem_mb=scaled(2000, 4000),
        runtime=scaled(10, 5),
        gpu=GPUS,
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/evaluate_builtin.py"


# the same evaluator on prompts disjoint from the test prompts: what a merge's own density
# choice reads (results/summary/merge_choice.md, thresholds.mode: merge)
rule evaluate_validation:
    input:
        model_input,
    output:
        layout.scores("{seed}", "validation", "{model}"),
    log:
        layout.log("evaluate_validation", "{seed}", "{model}"),
    params:
        tasks=config["evaluation"]["tasks"],
        n=N_EVAL,
        family=FAMILY or "tiny",
        seed=lambda wc: int(wc.seed),
        split="validation",
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
        model_input,
    output:
        scores=layout.scores("{seed}", "olmes", "{model}"),
        raw=directory(layout.raw_scores("{seed}", "olmes", "{model}")),
    log:
        layout.log("evaluate_olmes", "{seed}", "{model}"),
    benchmark:
        layout.benchmark("evaluate_olmes", "{seed}", "{model}")
    params:
        tasks=lambda wc: model_tasks("olmes", wc.model),
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
        model_input,
    output:
        scores=layout.scores("{seed}", "lm_eval", "{model}"),
        raw=directory(layout.raw_scores("{seed}", "lm_eval", "{model}")),
    log:
        layout.log("evaluate_lm_eval", "{seed}", "{model}"),
    benchmark:
        layout.benchmark("evaluate_lm_eval", "{seed}", "{model}")
    params:
        tasks=lambda wc: model_tasks("lm_eval", wc.model),
        settings=backend_settings("lm_eval"),
        n=N_EVAL,
        seed=lambda wc: int(wc.seed),
        family=FAMILY or "tiny",
    # one thread: on the demo's models a second one made lm_eval slower and cost 40% more
    # CPU; an evaluation of large models on CPUs sets more (--set-threads evaluate_lm_eval=N)
    threads: 1
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
        model=model_input,
        texts=lambda wc: [layout.per_seed(f, wc.seed) for f in PERPLEXITY_TEXTS.values()],
    output:
        layout.scores("{seed}", "perplexity", "{model}"),
    log:
        layout.log("evaluate_perplexity", "{seed}", "{model}"),
    benchmark:
        layout.benchmark("evaluate_perplexity", "{seed}", "{model}")
    params:
        names=list(PERPLEXITY_TEXTS),  # the task name of each input text, in order
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
