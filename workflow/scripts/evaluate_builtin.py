from otamerge.io.atomic import write_json
from otamerge.evaluation.builtin import TEST, evaluate, load_model
from otamerge.logs import job

with job(snakemake.log[0]):
    model, tokenizer = load_model(snakemake.input[0])
    p = snakemake.params
    # the held-out test prompts, or (rule evaluate_validation) prompts disjoint from them
    rows = evaluate(model, tokenizer, p.tasks, p.n, p.seed, snakemake.wildcards.model, p.family,
                    split=p.get("split", TEST))
    write_json(snakemake.output[0], rows)
