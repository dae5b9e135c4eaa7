from pathlib import Path

from otamerge import layout
from otamerge.atomic import write_json
from otamerge.logs import to_file
from otamerge.moments import Moments, compress

with to_file(snakemake.log[0]):
    moments = layout.preconditioner(snakemake.input[0])  # the downloaded moments in the expert's folder
    src = Moments(moments, f"moments {moments}")
    names = sorted({k.removesuffix(".exp_avg_sq") for k in src.ckpt.names()})
    report = compress(src, names, Path(snakemake.output.moments), rank=1)
    write_json(snakemake.output.report, report)
    print(f"rank-1 moments {report['reduction']:.2%} smaller (2-D tensors {report['reduction_2d']:.2%})")
