"""The ``otamerge`` command line: one subcommand per stage of the workflow."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import yaml

from otamerge.errors import OtaMergeError
from otamerge.fisher_cli import add_fisher_parser


def _cmd_demo_build(args: argparse.Namespace) -> None:
    from otamerge.demo.build import build_family
    from otamerge.workflow.seeds import config_seeds

    with open(args.config) as fh:
        cfg = yaml.safe_load(fh)
    out = build_family(args.out, cfg["demo"], config_seeds(cfg)[0] if args.seed is None else args.seed)
    print(f"demo models written to {out}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from otamerge.demo.tasks import TASKS
    from otamerge.evaluation.builtin import evaluate, load_model

    model, tokenizer = load_model(args.model_dir)
    name = args.name or Path(args.model_dir).name
    _write_rows(evaluate(model, tokenizer, args.tasks or list(TASKS), args.n, args.seed, name), args.out)


def _write_rows(rows: list[dict], out: str | None) -> None:
    from otamerge.io.atomic import write_json

    if out:
        write_json(out, rows)
    json.dump(rows, sys.stdout, indent=1)
    print()


def _cmd_perplexity(args: argparse.Namespace) -> None:
    from otamerge.evaluation import perplexity
    from otamerge.evaluation.builtin import load_model

    model, tokenizer = load_model(args.model_dir)
    texts = _pairs(args.text, "--text")
    rows = perplexity.evaluate(model, tokenizer, texts, args.name or Path(args.model_dir).name,
                               args.max_length, args.stride)
    _write_rows(rows, args.out)


def _cmd_hessians(args: argparse.Namespace) -> None:
    from otamerge.curvature.calibration import Calibration
    from otamerge.curvature.hessians import hessians_cached

    cal = Calibration(args.calibration, args.samples, args.seqlen, args.seed)
    hessians, cached = hessians_cached(args.base, cal, args.out, progress=not args.quiet, device=args.device)
    how = "read from the cache" if cached else "collected"
    print(f"{len(hessians.names())} Hessians {how}: {args.out}")


def _cmd_importance(args: argparse.Namespace) -> None:
    from otamerge.curvature.hessians import write_importance

    meta = write_importance(args.hessians, args.base, args.out, args.damping, progress=not args.quiet)
    info = meta["source_metadata"]
    print(f"OBS importance of {info['linear_tensors']} linear weights written to {args.out}; "
          f"{len(info['fallback_magnitude'])} tensors fall back to magnitude")


def _cmd_merge(args: argparse.Namespace) -> None:
    from otamerge.merge import MergeOptions, merge_file

    opts = MergeOptions(device=args.device, chunk_bytes=int(args.chunk_mb * (1 << 20)),
                        out_shard_bytes=int(args.out_shard_size * (1 << 30)), seed=args.seed,
                        progress=not args.quiet)
    out = merge_file(args.config, args.out_dir, opts)
    print(f"merged model written to {out}")


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for v in values or []:
        if "=" not in v:
            raise OtaMergeError(f"{what}: expected NAME=VALUE, got {v!r}")
        k, val = v.split("=", 1)
        out[k] = val
    return out


def _cmd_extract_lora(args: argparse.Namespace) -> None:
    from otamerge.extract_lora import ExtractOptions, extract_lora

    report = extract_lora(args.model, args.base, args.out_dir, ExtractOptions(
        rank=args.rank, sv_epsilon=args.sv_epsilon, distribute_scale=not args.no_distribute_scale,
        device=args.device, progress=not args.quiet))
    print(f"LoRA adapter of rank <= {args.rank} in {args.out_dir}: {report['adapter_bytes']:,} bytes "
          f"({report['lora_bytes']:,} in LoRA factors), relative Frobenius error of the linear layers' "
          f"task vectors {report['relative_error']:.4f}")


def _cmd_ffg(args: argparse.Namespace) -> None:
    from otamerge.ffg.graft import FfgOptions, ffg_sweep
    from otamerge.names import STATISTICS

    opts = FfgOptions(chunk_bytes=int(args.chunk_mb * (1 << 20)),
                      out_shard_bytes=int(args.out_shard_size * (1 << 30)), progress=not args.quiet,
                      device=args.device)
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


_OPTIMIZER_MODEL = ("model folder (config.json) whose parameters name the states of a .pt optimizer file: "
                    "transformers.Trainer's grouping or the model's order, every shape checked")


def _cmd_thresholds(args: argparse.Namespace) -> None:
    import pandas as pd

    from otamerge.io.atomic import atomic_file
    from otamerge.ffg.density_choice import sweep_statistics, thresholds_config

    sweeps = _pairs(args.expert, "--expert")
    fixed = {k: float(v) for k, v in _pairs(args.density, "--density").items()}
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


def _cmd_download(args: argparse.Namespace) -> None:
    from otamerge.io.download import Source, download

    src = Source(name=args.name or args.source, ref=args.source, revision=args.revision,
                 preconditioner=args.preconditioner)
    out = download(src, args.dest)
    print(f"{args.source} ready in {out}")


def _cmd_card(args: argparse.Namespace) -> None:
    from otamerge.merge import write_card

    out = write_card(args.model_dir, args.out, args.thresholds, args.scores or (), args.title)
    print(f"model card written to {out}")


def _cmd_push(args: argparse.Namespace) -> None:
    from otamerge.io.publish import push

    done = push(args.model_dir, args.repo_id, args.card, private=not args.public, message=args.message)
    print(f"{len(done['files'])} files pushed to {done['url']} (commit {done['commit']})")
    if args.out:
        from otamerge.io.atomic import write_json

        write_json(args.out, done)


def _streaming_options(p: argparse.ArgumentParser) -> None:
    """Options of the commands that stream models tensor by tensor."""
    p.add_argument("--chunk-mb", type=float, default=4, help="row chunk size per input, MiB of fp32 (bounds memory)")
    p.add_argument("--out-shard-size", type=float, default=5, help="output shard size, GiB")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")


def _add_model_commands(sub) -> None:
    """Subcommands that build, fetch and merge models."""
    d = sub.add_parser("demo-build", help="train the demo base and experts (CPU, minutes)")
    d.add_argument("out", help="output folder (base/ and experts/<name>/ are created in it)")
    d.add_argument("--config", default="config/config.yaml", help="workflow config with a demo section")
    d.add_argument("--seed", type=int, default=None, help="the seed to build (default: the config's first)")
    d.set_defaults(func=_cmd_demo_build)

    dl = sub.add_parser("download", help="fetch a model (and its preconditioner) from the hub or a local folder")
    dl.add_argument("source", help="hub repo id (owner/name) or local model folder")
    dl.add_argument("dest", help="destination folder (appears only when every file is complete)")
    dl.add_argument("--revision", default="main", help="branch, tag or commit (resolved commit is recorded)")
    dl.add_argument("--preconditioner", help="exp_avg_sq file: repo_id/path, repo_id:path, a path in the "
                    "model's repo, or a local path")
    dl.add_argument("--name", help="model name for messages")
    dl.set_defaults(func=_cmd_download)

    m = sub.add_parser("merge", help="merge models per a mergekit-style YAML config")
    m.add_argument("config", help="merge config (merge_method, base_model, models, parameters, dtype, ...)")
    m.add_argument("out_dir", help="output model folder (written atomically)")
    m.add_argument("--seed", type=int, default=0, help="seed of random masks (DARE)")
    _streaming_options(m)
    m.set_defaults(func=_cmd_merge)

    x = sub.add_parser("extract-lora", help="a model's difference to its base as a PEFT LoRA adapter "
                       "(truncated SVD per linear layer)")
    x.add_argument("model", help="fine-tuned or merged model folder")
    x.add_argument("base", help="the base model folder the adapter applies to")
    x.add_argument("out_dir", help="adapter folder (adapter_config.json, adapter_model.safetensors, "
                   "extraction.json; written atomically)")
    x.add_argument("--rank", type=int, default=128, help="largest rank per layer (default 128, as mergekit's)")
    x.add_argument("--sv-epsilon", type=float, default=0.0, help="drop singular values at or below this")
    x.add_argument("--no-distribute-scale", action="store_true",
                   help="lora_A = S V^T and lora_B = U (default: S^1/2 on each side)")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    x.set_defaults(func=_cmd_extract_lora)


def _add_publish_commands(sub) -> None:
    """A merged model's card, and publishing it."""
    cd = sub.add_parser("card", help="write a merged model's card (README.md with the hub's front matter)")
    cd.add_argument("model_dir", help="merged model folder (its merge_config.yml)")
    cd.add_argument("--out", help="card file (default: the folder's README.md)")
    cd.add_argument("--thresholds", help="the merge's thresholds.csv (FFG densities chosen and why)")
    cd.add_argument("--scores", nargs="*", help="score files (JSON rows: model, task, metric, score, n, backend)")
    cd.add_argument("--title", help="the card's title")
    cd.set_defaults(func=_cmd_card)

    pu = sub.add_parser("push", help="publish a model folder to the Hugging Face hub (HF_TOKEN, HF_ENDPOINT)")
    pu.add_argument("model_dir")
    pu.add_argument("repo_id", help="owner/name; created if missing")
    pu.add_argument("--card", help="card file uploaded as README.md (default: the folder's own)")
    pu.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    pu.add_argument("--message", help="commit message")
    pu.add_argument("--out", help="write the repo, commit and files pushed (JSON) here")
    pu.set_defaults(func=_cmd_push)


def _add_ffg_commands(sub) -> None:
    """FFG grafts, moment compression and threshold extraction."""
    f = sub.add_parser("ffg", help="Fast Fisher Grafting of one expert at one or more densities")
    f.add_argument("--base", required=True, help="base model folder")
    f.add_argument("--expert", required=True, help="expert model folder")
    f.add_argument("--moments", help="expert's exp_avg_sq file, full or compressed (fisher metric), "
                   "or the OBS importance file (sparsegpt metric)")
    f.add_argument("--density", type=float, nargs="+", required=True, help="fractions to keep, in (0, 1]")
    f.add_argument("--metric", default="fisher", help="fisher, magnitude or sparsegpt (checked by the FFG)")
    _streaming_options(f)
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
    o.add_argument("output", help="moments safetensors file (fp32; step count and betas in its metadata)")
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


def _add_evaluation_commands(sub) -> None:
    """Scores of a model folder."""
    e = sub.add_parser("evaluate", help="score a model folder on the demo tasks (built-in backend)")
    e.add_argument("model_dir")
    e.add_argument("--name", help="model name in the score rows (default: folder name)")
    e.add_argument("--tasks", nargs="*", help="demo tasks (default: all)")
    e.add_argument("--n", type=int, default=100, help="held-out prompts per task")
    e.add_argument("--seed", type=int, default=0, help="seed of the held-out prompts")
    e.add_argument("--out", help="write the score rows to this JSON file")
    e.set_defaults(func=_cmd_evaluate)

    pp = sub.add_parser("perplexity", help="perplexity of a model on text files (sliding window)")
    pp.add_argument("model_dir")
    pp.add_argument("--text", nargs="+", required=True, metavar="NAME=FILE", help="named text files")
    pp.add_argument("--name", help="model name in the score rows (default: folder name)")
    pp.add_argument("--max-length", type=int, help="window length (default: the model's positions)")
    pp.add_argument("--stride", type=int, help="tokens scored per later window (default: half the window)")
    pp.add_argument("--out", help="write the score rows to this JSON file")
    pp.set_defaults(func=_cmd_perplexity)


def _add_curvature_commands(sub) -> None:
    """The base's calibration Hessians and the OBS importance."""
    h = sub.add_parser("hessians", help="calibration Hessians X^T X of the base's linear layers (cached)")
    h.add_argument("base", help="base model folder")
    h.add_argument("out", help="Hessian cache folder (sharded safetensors); reused when base and calibration are the same")
    h.add_argument("--calibration", required=True, help="calibration text (.txt, or .jsonl with a text field)")
    h.add_argument("--samples", type=int, default=32, help="calibration windows")
    h.add_argument("--seqlen", type=int, default=128, help="tokens per window")
    h.add_argument("--seed", type=int, default=0, help="seed of the window offsets")
    h.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    h.add_argument("--quiet", action="store_true")
    h.set_defaults(func=_cmd_hessians)

    im = sub.add_parser("importance", help="OBS (SparseGPT) importance from cached Hessians, for FFG and trim_by")
    im.add_argument("hessians", help="Hessian cache folder written by otamerge hessians")
    im.add_argument("base", help="base model folder")
    im.add_argument("out", help="importance file (rank-1 moments format)")
    im.add_argument("--damping", type=float, default=0.01, help="added to H's diagonal, relative to its mean")
    im.add_argument("--quiet", action="store_true")
    im.set_defaults(func=_cmd_importance)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="otamerge", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_model_commands, _add_publish_commands, _add_ffg_commands, _add_evaluation_commands,
                _add_curvature_commands, add_fisher_parser):
        add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except OtaMergeError as exc:
        print(f"otamerge: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
