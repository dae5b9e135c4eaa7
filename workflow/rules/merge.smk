rule merge_config:
    input:
        unpack(get_merge_config_inputs),
    output:
        config=layout.merge_config("{seed}", "{merge}"),
        choices=layout.merge_thresholds("{seed}", "{merge}"),
    log:
        layout.log("merge_config", "{seed}", "{merge}"),
    params:
        get_merge_config_params,
    threads: 1
    resources:
        mem_mb=scaled(1000, 0),
        runtime=scaled(5, 0),
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/merge_config.py"


rule merge:
    input:
        config=layout.merge_config("{seed}", "{merge}"),
    output:
        directory(layout.merged_model("{seed}", "{merge}")),
    log:
        layout.log("merge", "{seed}", "{merge}"),
    benchmark:
        layout.benchmark("merge", "{seed}", "{merge}")
    params:
        # random masks (DARE) follow the run's seed unless the merge fixes its own
        seed=lambda wc: PLAN.merges[wc.merge].get("seed", int(wc.seed)),
    threads: 1
    resources:
        mem_mb=scaled(4000, 2500),
        runtime=scaled(10, 10),
        gpu=PLAN.gpus,
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/merge.py"
