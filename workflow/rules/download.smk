rule download:
    input:
        download_input,
    output:
        directory("results/models/{name}"),
    log:
        "logs/download/{name}.log",
    params:
        source=lambda wc: SOURCES[wc.name],
    threads: 1
    resources:
        mem_mb=1000,
        runtime=600,
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/download.py"
