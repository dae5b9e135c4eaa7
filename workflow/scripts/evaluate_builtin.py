from otamerge.io.atomic import write_json
from otamerge.evaluation.builtin import evaluate, load_model
from otamerge.logs import job

with job(snakemake.log[0]):
    model, tokenizer = load_model(snakemake.input[0])
    p = snakemake.params
    # each output names its prompts: test (the seed's held-out prompts) and, from rule
    # evaluate_validation, validation (prompts disjoint from them)
    for split, out in snakemake.output.items():
        write_json(out, evaluate(model, tokenizer, p.tasks, p.n, p.seed, snakemake.wildcards.model, p.family,
                                 split=split))
