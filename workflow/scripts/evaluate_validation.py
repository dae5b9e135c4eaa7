from otamerge.io.atomic import write_json
from otamerge.evaluation.builtin import VALIDATION, evaluate, load_model
from otamerge.logs import job

with job(snakemake.log[0]):
    model, tokenizer = load_model(snakemake.input[0])
    p = snakemake.params
    rows = evaluate(model, tokenizer, p.tasks, p.n, p.seed, snakemake.wildcards.model, p.family, split=VALIDATION)
    write_json(snakemake.output[0], rows)
