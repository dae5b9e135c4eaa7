from otamerge.io.atomic import write_json
from otamerge.io.publish import push
from otamerge.logs import job

with job(snakemake.log[0]):
    p = snakemake.params
    done = push(snakemake.input.model, p.repo, snakemake.input.card, private=p.private)
    print(f"{len(done['files'])} files pushed to {done['url']} (commit {done['commit']})")
    write_json(snakemake.output[0], done)
