rule bias_correct_moments:
    input:
        layout.downloaded_model("{seed}", "{expert}"),
    output:
        layout.corrected_moments("{seed}", "{expert}"),
    log:
        layout.log("bias_correct_moments", "{seed}", "{expert}"),
    benchmark:
        layout.benchmark("bias_correct_moments", "{seed}", "{expert}")
    params:
        moments=lambda wc: PLAN.downloaded_moments(wc.seed, wc.expert),
        optimizer=lambda wc: PLAN.optimizer_override(wc.expert),
    threads: 1
    resources:
        mem_mb=scaled(2000, 500),
        runtime=scaled(5, 2),
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/bias_correct_moments.py"


rule compress_moments:
    input:
        lambda wc: PLAN.moments_input(wc.seed, wc.expert),
    output:
        moments=layout.rank1_moments("{seed}", "{expert}"),
        report=layout.rank1_report("{seed}", "{expert}"),
    log:
        layout.log("compress_moments", "{seed}", "{expert}"),
    benchmark:
        layout.benchmark("compress_moments", "{seed}", "{expert}")
    params:
        # downloaded, bias-corrected or the expert's empirical Fisher
        moments=lambda wc: PLAN.moments_file(wc.seed, wc.expert),
    threads: 1
    resources:
        mem_mb=scaled(2000, 500),
        runtime=scaled(5, 2),
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/compress_moments.py"


rule ffg:
    input:
        base=layout.downloaded_model("{seed}", "base"),
        expert=layout.downloaded_model("{seed}", "{expert}"),
        moments=get_ffg_moments,
    output:
        directory(layout.graft_dir("{seed}", "{expert}", "{metric}", "{density}")),
    log:
        layout.log("ffg", "{seed}", "{expert}/{metric}/{density}"),
    benchmark:
        layout.benchmark("ffg", "{seed}", "{expert}/{metric}/{density}")
    params:
        density=lambda wc: float(wc.density),
        # the file itself: downloaded moments are inside the expert's folder (the input)
        moments=get_ffg_moments_file,
    threads: 1
    resources:
        mem_mb=scaled(2000, 1000),
        runtime=scaled(10, 5),
        gpu=PLAN.gpus,
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/ffg.py"
