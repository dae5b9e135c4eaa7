# A real pretrained family (config/smollm2.yaml): the base converted once from the GGUF
# file a registry package ships, experts fine-tuned from it per seed
if PLAN.family == "pretrained":

    rule pretrained_base:
        output:
            directory(layout.converted_base(PLAN.outdir)),
        log:
            layout.log("pretrained_base", None, "base"),
        benchmark:
            layout.benchmark("pretrained_base", None, "base")
        params:
            base=PLAN.build["base"],
            dtype=PLAN.build["dtype"],
        threads: PLAN.build["threads"]
        resources:
            mem_mb=scaled(1500, 12000),
            runtime=scaled(10, 0),
        conda:
            "../envs/otamerge.yaml"
        script:
            "../scripts/pretrained_base.py"


    rule pretrained_expert:
        input:
            layout.converted_base(PLAN.outdir),
        output:
            directory(layout.demo_expert(PLAN.outdir, "{seed}", "{expert}")),
        log:
            layout.log("pretrained_expert", "{seed}", "{expert}"),
        benchmark:
            layout.benchmark("pretrained_expert", "{seed}", "{expert}")
        params:
            seed=lambda wc: int(wc.seed),
            n_eval=PLAN.n_eval,
            torch_threads=PLAN.build["threads"],
            task=lambda wc: PLAN.task[wc.expert],
            settings=get_expert_settings,
        threads: PLAN.build["threads"]
        resources:
            # fp32 weights, gradients and both Adam moments, and activations
            mem_mb=scaled(2000, 30000),
            runtime=scaled(30, 200),
            gpu=PLAN.gpus,
        conda:
            "../envs/otamerge.yaml"
        script:
            "../scripts/pretrained_expert.py"
