from pathlib import Path

from otamerge.io.atomic import write_json
from otamerge.logs import job
from otamerge.curvature.moments import Moments, compress

with job(snakemake.log[0]):
    moments = snakemake.params.moments  # downloaded (inside the expert's folder), bias-corrected, or an empirical Fisher
    src = Moments(moments, f"moments {moments}")
    report = compress(src, src.parameters(), Path(snakemake.output.moments), rank=1)
    write_json(snakemake.output.report, report)
    print(f"rank-1 moments {report['reduction']:.2%} smaller (2-D tensors {report['reduction_2d']:.2%})")
