# Every merged model's card: README.md with the hub's front matter, the models and
# revisions it was made from, the FFG densities chosen and why, and its scores. With
# config publish, the merged model is pushed to the hub with that card (HF_TOKEN).
rule model_card:
    input:
        model=layout.merged_model("{seed}", "{merge}"),
        thresholds=layout.merge_thresholds("{seed}", "{merge}"),
        scores=lambda wc: [layout.scores(wc.seed, b, layout.merge_name(wc.merge)) for b in PLAN.backends],
    output:
        layout.model_card("{seed}", "{merge}"),
    log:
        layout.log("model_card", "{seed}", "{merge}"),
    params:
        title=lambda wc: f"{wc.merge} (seed {wc.seed})",
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/model_card.py"


rule publish:
    input:
        model=layout.merged_model("{seed}", "{merge}"),
        card=layout.model_card("{seed}", "{merge}"),
    output:
        layout.published("{seed}", "{merge}"),
    log:
        layout.log("publish", "{seed}", "{merge}"),
    params:
        repo=lambda wc: PLAN.published[int(wc.seed), wc.merge],
        private=config["publish"]["private"] if PLAN.published else None,
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/publish.py"


rule extract_lora:
    input:
        model=layout.merged_model("{seed}", "{merge}"),
        base=layout.downloaded_model("{seed}", "base"),
    output:
        directory(layout.lora_adapter("{seed}", "{merge}")),
    log:
        layout.log("extract_lora", "{seed}", "{merge}"),
    benchmark:
        layout.benchmark("extract_lora", "{seed}", "{merge}")
    params:
        rank=config["lora"]["rank"] if PLAN.lora else None,
        sv_epsilon=config["lora"]["sv_epsilon"] if PLAN.lora else None,
    threads: 1
    resources:
        mem_mb=scaled(4000, 2500),
        runtime=scaled(10, 10),
        gpu=PLAN.gpus,
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/extract_lora.py"
