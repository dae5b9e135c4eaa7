rule download:
    input:
        get_download_input,
    output:
        directory(layout.downloaded_model("{seed}", "{name}")),
    log:
        layout.log("download", "{seed}", "{name}"),
    params:
        source=lambda wc: PLAN.source(wc.name, wc.seed),
    threads: 1
    resources:
        mem_mb=scaled(1000, 0),
        runtime=scaled(10, 10),
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/download.py"
