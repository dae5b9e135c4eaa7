import json

from otamerge.logs import job
from otamerge.pretrained.convert import convert

with job(snakemake.log[0]):
    print(json.dumps(convert(snakemake.params.base, snakemake.output[0], snakemake.params.dtype), indent=1))
