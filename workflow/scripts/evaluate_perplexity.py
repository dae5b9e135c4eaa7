from otamerge.io.atomic import write_json
from otamerge.evaluation import perplexity
from otamerge.evaluation.builtin import load_model
from otamerge.logs import job

with job(snakemake.log[0]):
    p = snakemake.params
    model, tokenizer = load_model(snakemake.input.model)
    texts = p.texts  # task name -> text file
    rows = perplexity.evaluate(model, tokenizer, texts, snakemake.wildcards.model, p.max_length, p.stride)
    write_json(snakemake.output[0], rows)
