"""``otamerge`` subcommands: subcommands that build, fetch and merge models."""

from __future__ import annotations

import argparse

import yaml

from otamerge.cli.common import streaming_options, streaming_settings


def _cmd_demo_build(args: argparse.Namespace) -> None:
    from otamerge.demo.build import build_family
    from otamerge.workflow.seeds import config_seeds

    with open(args.config) as fh:
        cfg = yaml.safe_load(fh)
    out = build_family(args.out, cfg["demo"], config_seeds(cfg)[0] if args.seed is None else args.seed)
    print(f"demo models written to {out}")


def _cmd_download(args: argparse.Namespace) -> None:
    from otamerge.io.download import Source, download

    src = Source(name=args.name or args.source, ref=args.source, revision=args.revision,
                 preconditioner=args.preconditioner)
    out = download(src, args.dest)
    print(f"{args.source} ready in {out}")


def _merge_options(args: argparse.Namespace):
    from otamerge.merge import MergeOptions

    return MergeOptions(**streaming_settings(args), seed=args.seed)


def _cmd_merge(args: argparse.Namespace) -> None:
    from otamerge.merge import merge_file

    out = merge_file(args.config, args.out_dir, _merge_options(args))
    print(f"merged model written to {out}")


def _cmd_multi(args: argparse.Namespace) -> None:
    from otamerge.multimerge import run_documents

    steps = run_documents(args.config, args.intermediate_dir, args.out_path, _merge_options(args), args.lazy)
    print("merged models: " + ", ".join(f"{s.name or 'final'} in {s.out}" for s in steps))


def _cmd_extract_lora(args: argparse.Namespace) -> None:
    from otamerge.extract_lora import ExtractOptions, extract_lora

    report = extract_lora(args.model, args.base, args.out_dir, ExtractOptions(
        rank=args.rank, sv_epsilon=args.sv_epsilon, distribute_scale=not args.no_distribute_scale,
        device=args.device, progress=not args.quiet))
    print(f"LoRA adapter of rank <= {args.rank} in {args.out_dir}: {report['adapter_bytes']:,} bytes "
          f"({report['lora_bytes']:,} in LoRA factors), relative Frobenius error of the linear layers' "
          f"task vectors {report['relative_error']:.4f}")


def add_commands(sub) -> None:
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
    streaming_options(m)
    m.set_defaults(func=_cmd_merge)

    mm = sub.add_parser("multi", help="several merges in one multi-document YAML (mergekit-multi's format): "
                        "named merges into the intermediate folder, each after the merges it reads")
    mm.add_argument("config", help="YAML documents, each a merge config with an optional name")
    mm.add_argument("--intermediate-dir", "-I", required=True, help="folder of the named merges (<dir>/<name>)")
    mm.add_argument("--out-path", help="folder of the unnamed (final) merge, if the file has one")
    mm.add_argument("--lazy", action=argparse.BooleanOptionalAction, default=True,
                    help="skip merges whose folder already holds a model (default: on)")
    mm.add_argument("--seed", type=int, default=0, help="seed of random masks (DARE)")
    streaming_options(mm)
    mm.set_defaults(func=_cmd_multi)

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
