from otamerge.card import write_card
from otamerge.logs import job

with job(snakemake.log[0]):
    inp = snakemake.input
    write_card(inp.model, snakemake.output[0], inp.thresholds, inp.scores, snakemake.params.title)
