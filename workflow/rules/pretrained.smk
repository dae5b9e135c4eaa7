# A real pretrained family (config/smollm2.yaml): the base converted once from the GGUF
# file a registry package ships, experts fine-tuned from it per seed
if FAMILY == "pretrained":

    rule pretrained_base:
        output:
            directory(layout.converted_base(DEMO)),
        log:
            layout.log("pretrained_base", None, "base"),
        benchmark:
            layout.benchmark("pretrained_base", None, "base")
        params:
            base=BUILD["base"],
            dtype=BUILD.get("dtype", "bfloat16"),
        threads: BUILD["threads"]
        resources:
            mem_mb=scaled(1500, 12000),
            runtime=scaled(10, 0),
        conda:
            "../envs/otamerge.yaml"
        script:
            "../scripts/pretrained_base.py"


    rule pretrained_expert:
        input:
            layout.converted_base(DEMO),
        output:
            directory(layout.demo_expert(DEMO, "{seed}", "{expert}")),
        log:
            layout.log("pretrained_expert", "{seed}", "{expert}"),
        benchmark:
            layout.benchmark("pretrained_expert", "{seed}", "{expert}")
        params:
            seed=lambda wc: int(wc.seed),
            n_eval=N_EVAL,
            torch_threads=BUILD["threads"],
            task=lambda wc: TASK[wc.expert],
            settings=expert_settings,
        threads: BUILD["threads"]
        resources:
            # fp32 weights, gradients and both Adam moments, and activations
            mem_mb=scaled(2000, 30000),
            runtime=scaled(30, 200),
            gpu=GPUS,
        conda:
            "../envs/otamerge.yaml"
        script:
            "../scripts/pretrained_expert.py"
