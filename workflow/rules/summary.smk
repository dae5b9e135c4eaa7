# cross-seed tables and plots. Report categories are shown in alphabetical order: the
# numbers put retention, the headline, first.
rule summary:
    input:
        scores=PLAN.evaluated(PLAN.models + [layout.merge_name(m) for m in PLAN.merges]),
        grafts=PLAN.graft_scores(),
        thresholds=list(PLAN.threshold_files()),
    output:
        scores=layout.summary("scores.csv"),
        table=report(layout.summary("accuracy.md"), caption="../report/accuracy.rst", category="2. Accuracy"),
        matrix=layout.summary("accuracy.json"),
    log:
        layout.log("summary", None, "summary"),
    params:
        tasks=PLAN.all_tasks(),
        ffg_metrics={f: PLAN.merges[m]["ffg"] for f, m in PLAN.threshold_files().items()},  # by thresholds file
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
        PLAN.evaluated(PLAN.models + [layout.merge_name(m) for m in PLAN.merges]),
    output:
        table=report(layout.summary("retention.md"), caption="../report/retention.rst", category="1. Retention"),
        csv=report(layout.summary("retention.csv"), caption="../report/retention_csv.rst", category="1. Retention"),
        by_size=layout.summary("retention_by_size.csv"),
        by_seed=layout.summary("retention_by_seed.csv"),
    log:
        layout.log("retention", None, "retention"),
    params:
        merges=PLAN.merge_infos(),
        tasks=PLAN.task,
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
        scores=PLAN.evaluated(PLAN.sweep_models(), ["builtin"]),
        thresholds=list(PLAN.threshold_files()),
    output:
        sweep=report(layout.summary("sweep.md"), caption="../report/sweep.rst", category="3. FFG sweep"),
        sweep_csv=layout.summary("sweep.csv"),
        thresholds=report(
            layout.summary("thresholds.csv"), caption="../report/thresholds.rst", category="3. FFG sweep"
        ),
    log:
        layout.log("sweep_summary", None, "sweep_summary"),
    params:
        tasks=PLAN.task,
        merges=PLAN.threshold_files(),  # thresholds file -> its merge
    threads: 1
    resources:
        mem_mb=scaled(1000, 0),
        runtime=scaled(5, 0),
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/sweep_summary.py"


# the first seed's grafts and experts the plots read (name -> folder), listed once
PLOTTED = plotted_models(PLAN)


rule plots:
    input:
        scores=layout.summary("scores.csv"),
        retention=layout.summary("retention.csv"),
        by_size=layout.summary("retention_by_size.csv"),
        sweep=layout.summary("sweep.csv"),
        thresholds=layout.summary("thresholds.csv"),
        # where FFG keeps edits and the curvature overlap: the first seed's models
        grafts=list(PLOTTED["grafts"].values()),
        base=layout.downloaded_model(PLAN.seeds[0], "base"),
        experts=list(PLOTTED["experts"].values()),
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
        score=PLAN.sweep_score,
        seed=PLAN.seeds[0],
        models=PLOTTED,  # the input grafts and experts by name
        graft_merge=lambda wc: PLAN.ffg_merges[0],
        graft_metric=lambda wc: PLAN.merges[PLAN.ffg_merges[0]]["ffg"],
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
        models=claims_models(PLAN),
    output:
        table=report(layout.summary("claims.md"), caption="../report/claims.rst", category="0. Claims"),
        csv=layout.summary("claims.csv"),
    log:
        layout.log("claims", None, "claims"),
    params:
        seeds=claims_files(PLAN),
        merges=PLAN.claim_merges,
        ffg_metric=PLAN.merges[PLAN.claim_merges["ota_ffg"]]["ffg"] if PLAN.claim_merges["ota_ffg"] in PLAN.ffg_merges else None,
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
        validation=[f for s in PLAN.seeds for m in PLAN.sweep_points for f in PLAN.validation_scores(s, m)],
        by_seed=layout.summary("retention_by_seed.csv"),
    output:
        table=report(layout.summary("merge_choice.md"), caption="../report/merge_choice.rst", category="1. Retention"),
        csv=layout.summary("merge_choice.csv"),
    log:
        layout.log("merge_choice", None, "merge_choice"),
    params:
        points=PLAN.sweep_points,
        experts={m: PLAN.merge_experts(m) for m in PLAN.sweep_points},
        tasks=PLAN.task,
        metric=PLAN.threshold_score,
    threads: 1
    resources:
        mem_mb=scaled(1000, 0),
        runtime=scaled(5, 0),
    conda:
        "../envs/otamerge.yaml"
    script:
        "../scripts/merge_choice.py"
