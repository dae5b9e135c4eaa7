# cross-seed tables and plots. Report categories are shown in alphabetical order: the
# numbers put retention, the headline, first.
rule summary:
    input:
        scores=evaluated(MODELS + [layout.merge_name(m) for m in MERGES]),
        grafts=graft_scores(),
        thresholds=[layout.merge_thresholds(s, m) for s in SEEDS for m in FFG_MERGES],
    output:
        scores=layout.summary("scores.csv"),
        table=report(layout.summary("accuracy.md"), caption="../report/accuracy.rst", category="2. Accuracy"),
        matrix=layout.summary("accuracy.json"),
    log:
        layout.log("summary", None, "summary"),
    params:
        tasks=all_tasks(),
        ffg_metrics=[MERGES[m]["ffg"] for s in SEEDS for m in FFG_MERGES],  # one per thresholds file
    threads: 1
    resources:
        mem_mb=scaled(1000, 0),
        runtime=scaled(5, 0),
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/summary.py"


rule retention:
    input:
        evaluated(MODELS + [layout.merge_name(m) for m in MERGES]),
    output:
        table=report(layout.summary("retention.md"), caption="../report/retention.rst", category="1. Retention"),
        csv=report(layout.summary("retention.csv"), caption="../report/retention_csv.rst", category="1. Retention"),
        by_size=layout.summary("retention_by_size.csv"),
        by_seed=layout.summary("retention_by_seed.csv"),
    log:
        layout.log("retention", None, "retention"),
    params:
        merges=merge_infos(),
        tasks=TASK,
    threads: 1
    resources:
        mem_mb=scaled(1000, 0),
        runtime=scaled(5, 0),
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/retention.py"


rule sweep_summary:
    input:
        scores=evaluated(sweep_models(), ["builtin"]),
        thresholds=[layout.merge_thresholds(s, m) for s in SEEDS for m in FFG_MERGES],
    output:
        sweep=report(layout.summary("sweep.md"), caption="../report/sweep.rst", category="3. FFG sweep"),
        sweep_csv=layout.summary("sweep.csv"),
        thresholds=report(
            layout.summary("thresholds.csv"), caption="../report/thresholds.rst", category="3. FFG sweep"
        ),
    log:
        layout.log("sweep_summary", None, "sweep_summary"),
    params:
        tasks=TASK,
        merges=[m for s in SEEDS for m in FFG_MERGES],  # one per thresholds file
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
        scores=layout.summary("scores.csv"),
        retention=layout.summary("retention.csv"),
        by_size=layout.summary("retention_by_size.csv"),
        sweep=layout.summary("sweep.csv"),
        thresholds=layout.summary("thresholds.csv"),
        # where FFG keeps edits and the curvature overlap: the first seed's models
        grafts=[layout.model_folder(SEEDS[0], g) for g in graft_candidates()],
        base=layout.model_dir(SEEDS[0], "base"),
        experts=[layout.model_dir(SEEDS[0], e) for e in EXPERTS],
    output:
        sweep=report(layout.plot("ffg_sweep"), caption="../report/ffg_sweep.rst", category="4. Plots"),
        methods=report(layout.plot("methods"), caption="../report/methods.rst", category="4. Plots"),
        localization=report(layout.plot("localization"), caption="../report/localization.rst", category="4. Plots"),
        mask_rank=report(layout.plot("mask_rank"), caption="../report/mask_rank.rst", category="4. Plots"),
        overlap=report(
            layout.plot("curvature_overlap"), caption="../report/curvature_overlap.rst", category="4. Plots"
        ),
        density=report(layout.plot("merge_density"), caption="../report/merge_density.rst", category="4. Plots"),
    log:
        layout.log("plots", None, "plots"),
    params:
        score=config["thresholds"].get("score", "token_accuracy"),
        seed=SEEDS[0],
        grafts=graft_candidates(),  # model name of each input graft, in order
        graft_merge=lambda wc: FFG_MERGES[0],
        graft_metric=lambda wc: MERGES[FFG_MERGES[0]]["ffg"],
        experts=EXPERTS,  # name of each input expert, in order
    threads: 1
    resources:
        mem_mb=scaled(2000, 1000),
        runtime=scaled(10, 10),
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/plots.py"


rule claims:
    input:
        by_seed=layout.summary("retention_by_seed.csv"),
        sweep=layout.summary("sweep.csv"),
        thresholds=layout.summary("thresholds.csv"),
        models=claims_models(),
    output:
        table=report(layout.summary("claims.md"), caption="../report/claims.rst", category="0. Claims"),
        csv=layout.summary("claims.csv"),
    log:
        layout.log("claims", None, "claims"),
    params:
        seeds=claims_files(),
        merges=CLAIM_MERGES,
        ffg_metric=MERGES[CLAIM_MERGES["ota_ffg"]]["ffg"] if CLAIM_MERGES["ota_ffg"] in FFG_MERGES else None,
    threads: 1
    resources:
        mem_mb=scaled(2000, 4000),
        runtime=scaled(10, 20),
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/claims.py"


rule merge_choice:
    input:
        validation=[f for s in SEEDS for m in SWEEP_POINTS for f in validation_scores(s, m)],
        by_seed=layout.summary("retention_by_seed.csv"),
    output:
        table=report(layout.summary("merge_choice.md"), caption="../report/merge_choice.rst", category="1. Retention"),
        csv=layout.summary("merge_choice.csv"),
    log:
        layout.log("merge_choice", None, "merge_choice"),
    params:
        points=SWEEP_POINTS,
        experts={m: merge_experts(m) for m in SWEEP_POINTS},
        tasks=TASK,
        metric=THRESHOLD_SCORE,
    threads: 1
    resources:
        mem_mb=scaled(1000, 0),
        runtime=scaled(5, 0),
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/merge_choice.py"
