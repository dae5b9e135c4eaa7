"""``otamerge`` subcommands: FFG grafts, moment compression and threshold extraction."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

from otamerge.errors import OtaMergeError
from otamerge.cli.common import pairs, streaming_options, streaming_settings


_OPTIMIZER_MODEL = ("model folder (config.json) whose parameters name the states of a .pt optimizer file: "
                    "transformers.Trainer's grouping or the model's order, every shape checked")


def _cmd_ffg(args: argparse.Namespace) -> None:
    from otamerge.ffg.graft import FfgOptions, ffg_sweep
    from otamerge.names import STATISTICS

    opts = FfgOptions(**streaming_settings(args))
    out = ffg_sweep(args.base, args.expert, args.moments, args.density, args.metric, args.out_dir, opts)
    for d, folder in out.items():
        stats = json.loads((folder / STATISTICS).read_text())
        print(f"density {d:g}: threshold {stats['threshold']:.6g}, kept {stats['kept']} of {stats['total']} "
              f"({stats['achieved_density']:.6f}) -> {folder}")


def _cmd_compress(args: argparse.Namespace) -> None:
    from otamerge.io.atomic import write_json
    from otamerge.curvature.moments import Moments, compress
    from otamerge.curvature.optimizer_state import convert
    from otamerge.io.download import OPTIMIZER_SUFFIXES

    src = Path(args.input)
    with tempfile.TemporaryDirectory() as tmp:
        if src.suffix in OPTIMIZER_SUFFIXES or src.is_dir():  # a .pt file or a sharded checkpoint folder
            if not args.model:
                raise OtaMergeError(f"{src}: an optimizer state needs --model DIR to name its parameters")
            src = Path(tmp) / "converted.safetensors"  # a scratch file, gone with tmp
            convert(args.input, args.model, src)
        mom = Moments(src, f"moments {args.input}")
        names = mom.parameters()
        report = compress(mom, names, Path(args.output), rank=args.rank, progress=not args.quiet)
        mom.close()
    report["input"], report["output"] = str(args.input), str(args.output)
    if args.report:
        write_json(args.report, report)
    print(f"rank-{args.rank} moments: {report['compressed_bytes']:,} bytes instead of {report['full_bytes']:,} "
          f"({report['reduction']:.2%} smaller; 2-D tensors {report['reduction_2d']:.2%})")


def _cmd_convert_optimizer(args: argparse.Namespace) -> None:
    from otamerge.curvature.optimizer_state import convert

    record = convert(args.input, args.model, args.output)
    print(f"{args.output}: exp_avg_sq of {args.input} named by {record['layout']} "
          f"(step {record.get('step', '?')}, betas {record.get('betas', '?')})")


def _cmd_thresholds(args: argparse.Namespace) -> None:
    import pandas as pd

    from otamerge.io.atomic import atomic_file
    from otamerge.ffg.density_choice import sweep_statistics, thresholds_config

    sweeps = pairs(args.expert, "--expert")
    fixed = {k: float(v) for k, v in pairs(args.density, "--density").items()}
    scores: dict[str, dict[float, float]] = {}
    if args.scores:
        table = pd.read_csv(args.scores)
        for row in table.itertuples():
            scores.setdefault(str(row.expert), {})[float(row.density)] = float(row.score)
    with open(args.template) as fh:
        template = yaml.safe_load(fh)
    stats = {ref: sweep_statistics(folder) for ref, folder in sweeps.items()}
    cfg, rows = thresholds_config(template, stats, fixed, scores, args.retention)
    with atomic_file(args.out) as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    if args.table:
        with atomic_file(args.table) as fh:
            pd.DataFrame(rows).to_csv(fh, index=False)
    for r in rows:
        thr = "none" if r["threshold"] is None else f"{r['threshold']:.6g}"
        print(f"{r['expert']}: density {r['density']:g}, threshold {thr} ({r['reason']})")


def add_commands(sub) -> None:
    """FFG grafts, moment compression and threshold extraction."""
    f = sub.add_parser("ffg", help="Fast Fisher Grafting of one expert at one or more densities")
    f.add_argument("--base", required=True, help="base model folder")
    f.add_argument("--expert", required=True, help="expert model folder")
    f.add_argument("--moments", help="expert's exp_avg_sq file, full or compressed (fisher metric), "
                   "or the OBS importance file (sparsegpt metric)")
    f.add_argument("--density", type=float, nargs="+", required=True, help="fractions to keep, in (0, 1]")
    f.add_argument("--metric", default="fisher", help="fisher, magnitude or sparsegpt (checked by the FFG)")
    streaming_options(f)
    f.add_argument("out_dir", help="one model folder with statistics.json per density is written in it")
    f.set_defaults(func=_cmd_ffg)

    c = sub.add_parser("compress-moments", help="rank-1 (or rank-r) compression of exp_avg_sq")
    c.add_argument("input", help="moments safetensors, or a torch optimizer state (.pt, or an FSDP or DeepSpeed "
                   "universal checkpoint folder; with --model)")
    c.add_argument("output", help="compressed safetensors file")
    c.add_argument("--rank", type=int, default=1)
    c.add_argument("--model", help=_OPTIMIZER_MODEL)
    c.add_argument("--report", help="write the storage report (JSON) here")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=_cmd_compress)

    o = sub.add_parser("convert-optimizer", help="exp_avg_sq of a torch optimizer state (a Trainer's optimizer.pt) "
                       "as a moments safetensors file keyed by parameter name")
    o.add_argument("input", help="optimizer state file (.pt, read with weights_only=True), or a folder: "
                   "torch.distributed.checkpoint (FSDP) or DeepSpeed's universal checkpoint")
    o.add_argument("output", help="moments safetensors file (fp32; the step count in its metadata, and the "
                   "betas for an optimizer file)")
    o.add_argument("--model", required=True, help=_OPTIMIZER_MODEL)
    o.set_defaults(func=_cmd_convert_optimizer)

    t = sub.add_parser("thresholds", help="choose FFG densities and write their thresholds into a merge config")
    t.add_argument("template", help="merge config whose models get precond_threshold")
    t.add_argument("out", help="merge config to write")
    t.add_argument("--expert", nargs="+", required=True, metavar="MODEL=SWEEP_DIR",
                   help="a model of the template and the folder of its FFG sweep")
    t.add_argument("--density", nargs="*", metavar="MODEL=D", help="fixed density per model")
    t.add_argument("--scores", help="CSV with columns expert, density, score (own task) for automatic choice")
    t.add_argument("--retention", type=float, default=0.95, help="fraction of the expert's score to keep")
    t.add_argument("--table", help="CSV of the choices made and why")
    t.set_defaults(func=_cmd_thresholds)
