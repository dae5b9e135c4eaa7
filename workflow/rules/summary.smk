rule summary:
    input:
        scores=evaluated(MODELS + [f"merge/{m}" for m in MERGES]),
        grafts=graft_scores(),
        thresholds=expand("results/merges/{merge}/thresholds.csv", merge=FFG_MERGES),
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
        tasks=all_tasks(),
        ffg_metrics=[MERGES[m]["ffg"] for m in FFG_MERGES],
    threads: 1
    resources:
        mem_mb=scaled(1000, 0),
        runtime=scaled(5, 0),
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/summary.py"


rule sweep_summary:
    input:
        scores=evaluated(sweep_models(), ["builtin"]),
        thresholds=expand("results/merges/{merge}/thresholds.csv", merge=MERGES),
    output:
        sweep=report(
            "results/summary/sweep.md",
            caption="../report/sweep.rst",
            category="FFG sweep",
        ),
        sweep_csv="results/summary/sweep.csv",
        thresholds=report(
            "results/summary/thresholds.csv",
            caption="../report/thresholds.rst",
            category="FFG sweep",
        ),
    log:
        "logs/sweep_summary/sweep_summary.log",
    params:
        tasks=TASK,
    threads: 1
    resources:
        mem_mb=scaled(1000, 0),
        runtime=scaled(5, 0),
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/sweep_summary.py"


rule plots:
    input:
        scores="results/summary/scores.csv",
        sweep="results/summary/sweep.csv",
        thresholds="results/summary/thresholds.csv",
        grafts=[f"results/{m}" for m in graft_candidates()],
        base=BASE,
        experts=[expert_dir(e) for e in EXPERTS],
    output:
        sweep=report("results/plots/ffg_sweep.png", caption="../report/ffg_sweep.rst", category="Plots"),
        methods=report("results/plots/methods.png", caption="../report/methods.rst", category="Plots"),
        localization=report(
            "results/plots/localization.png", caption="../report/localization.rst", category="Plots"
        ),
        mask_rank=report("results/plots/mask_rank.png", caption="../report/mask_rank.rst", category="Plots"),
        overlap=report(
            "results/plots/curvature_overlap.png", caption="../report/curvature_overlap.rst", category="Plots"
        ),
    log:
        "logs/plots/plots.log",
    params:
        score=config["thresholds"].get("score", "token_accuracy"),
        graft_merge=lambda wc: FFG_MERGES[0],
        graft_metric=lambda wc: MERGES[FFG_MERGES[0]]["ffg"],
        moments={e: moments_file(e) for e in EXPERTS},
    threads: 1
    resources:
        mem_mb=scaled(2000, 1000),
        runtime=scaled(10, 10),
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/plots.py"
