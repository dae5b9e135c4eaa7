"""``otamerge`` subcommands: the base's calibration Hessians, the OBS importance and the
empirical Fisher."""

from __future__ import annotations

import argparse
import time


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


def add_commands(sub) -> None:
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

    add_fisher_command(sub)


def _cmd_fisher(args: argparse.Namespace) -> None:
    import torch

    from otamerge.curvature.fisher import FisherCalibration, write_fisher
    from otamerge.families import fisher_task

    cal = FisherCalibration(args.calibration, args.task, args.samples, args.batch_size, args.seqlen, args.seed,
                            args.n_eval, args.heldout_seed)
    start = time.perf_counter()
    meta = write_fisher(args.model, args.out, cal, args.device, not args.quiet, getattr(torch, args.dtype),
                        fisher_task(cal))
    print(f"empirical Fisher of {args.model} from {meta['samples']} samples in {meta['batches']} batches "
          f"({time.perf_counter() - start:.1f} s) written to {args.out}")


def add_fisher_command(sub) -> None:
    """``otamerge fisher MODEL --out FILE (--calibration TEXT | --task NAME) ...``"""
    f = sub.add_parser("fisher", help="empirical diagonal Fisher of a model in the moments format "
                       "(for experts that ship no optimizer state)")
    f.add_argument("model", help="model folder (weights and tokenizer)")
    f.add_argument("--out", required=True, help="moments file to write (safetensors)")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--calibration", help="calibration text (.txt, or .jsonl with a text field): windows of --seqlen")
    src.add_argument("--task", help="a demo task: its training examples, loss on the answer")
    f.add_argument("--samples", type=int, default=1024, help="calibration samples")
    f.add_argument("--batch-size", type=int, default=1,
                   help="samples per squared gradient: 1 is the per-sample Fisher (see otamerge.curvature.fisher)")
    f.add_argument("--seqlen", type=int, default=128, help="tokens per text window")
    f.add_argument("--seed", type=int, default=0, help="seed of the windows or task examples")
    f.add_argument("--n-eval", type=int, default=100, help="demo: held-out prompts per task, never drawn")
    f.add_argument("--heldout-seed", type=int, help="demo: the run seed of those held-out prompts (default --seed)")
    f.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="of the model and gradients")
    f.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    f.add_argument("--quiet", action="store_true")
    f.set_defaults(func=_cmd_fisher)
