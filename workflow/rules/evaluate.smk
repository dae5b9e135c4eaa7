rule evaluate_builtin:
    input:
        get_model,
    output:
        test=layout.scores("{seed}", "builtin", "{model}"),
    log:
        layout.log("evaluate_builtin", "{seed}", "{model}"),
    benchmark:
        layout.benchmark("evaluate_builtin", "{seed}", "{model}")
    params:
        tasks=lambda wc: PLAN.model_tasks("builtin", wc.model),
        n=PLAN.n_eval,
        family=PLAN.family or "tiny",
        # the seed's held-out prompts: the ones its demo build kept out of training
        seed=lambda wc: int(wc.seed),
    threads: 1
    resources:
        mem_mb=scaled(2000, 4000),
        runtime=scaled(10, 5),
        gpu=PLAN.gpus,
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/evaluate_builtin.py"


# the same evaluator also on prompts disjoint from the test prompts, for the models a
# merge's own density choice reads (results/summary/merge_choice.md, thresholds.mode:
# merge): both prompt sets in one job, so the model and the evaluator load once
use rule evaluate_builtin as evaluate_validation with:
    output:
        test=layout.scores("{seed}", "builtin", "{model}"),
        validation=layout.scores("{seed}", "validation", "{model}"),
    wildcard_constraints:
        model=alternatives(PLAN.validation_models()),
    log:
        layout.log("evaluate_validation", "{seed}", "{model}"),
    benchmark:
        layout.benchmark("evaluate_validation", "{seed}", "{model}")


ruleorder: evaluate_validation > evaluate_builtin


rule evaluate_olmes:
    input:
        get_model,
    output:
        scores=layout.scores("{seed}", "olmes", "{model}"),
        raw=directory(layout.raw_scores("{seed}", "olmes", "{model}")),
    log:
        layout.log("evaluate_olmes", "{seed}", "{model}"),
    benchmark:
        layout.benchmark("evaluate_olmes", "{seed}", "{model}")
    params:
        tasks=lambda wc: PLAN.model_tasks("olmes", wc.model),
        settings=PLAN.backend_settings("olmes"),
    threads: 4
    resources:
        mem_mb=scaled(8000, 4000),
        runtime=scaled(60, 60),
        gpu=PLAN.gpus,
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/evaluate_olmes.py"


rule evaluate_lm_eval:
    input:
        get_model,
    output:
        scores=layout.scores("{seed}", "lm_eval", "{model}"),
        raw=directory(layout.raw_scores("{seed}", "lm_eval", "{model}")),
    log:
        layout.log("evaluate_lm_eval", "{seed}", "{model}"),
    benchmark:
        layout.benchmark("evaluate_lm_eval", "{seed}", "{model}")
    params:
        tasks=lambda wc: PLAN.model_tasks("lm_eval", wc.model),
        settings=PLAN.backend_settings("lm_eval"),
        n=PLAN.n_eval,
        seed=lambda wc: int(wc.seed),
        family=PLAN.family or "tiny",
    # one thread: on the demo's models a second one made lm_eval slower and cost 40% more
    # CPU; an evaluation of large models on CPUs sets more (--set-threads evaluate_lm_eval=N)
    threads: 1
    resources:
        mem_mb=scaled(4000, 4000),
        runtime=scaled(20, 60),
        gpu=PLAN.gpus,
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/evaluate_lm_eval.py"


rule evaluate_perplexity:
    input:
        model=get_model,
        texts=lambda wc: list(PLAN.perplexity_files(wc.seed).values()),
    output:
        layout.scores("{seed}", "perplexity", "{model}"),
    log:
        layout.log("evaluate_perplexity", "{seed}", "{model}"),
    benchmark:
        layout.benchmark("evaluate_perplexity", "{seed}", "{model}")
    params:
        texts=lambda wc: PLAN.perplexity_files(wc.seed),  # task name -> text file
        max_length=PLAN.perplexity.get("max_length"),
        stride=PLAN.perplexity.get("stride"),
    threads: 1
    resources:
        mem_mb=scaled(2000, 4000),
        runtime=scaled(10, 10),
        gpu=PLAN.gpus,
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/evaluate_perplexity.py"
