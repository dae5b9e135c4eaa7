"""Helpers of several subcommand groups."""

from __future__ import annotations

import argparse

from otamerge.errors import OtaMergeError


def pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for v in values or []:
        if "=" not in v:
            raise OtaMergeError(f"{what}: expected NAME=VALUE, got {v!r}")
        k, val = v.split("=", 1)
        out[k] = val
    return out


def streaming_options(p: argparse.ArgumentParser) -> None:
    """Options of the commands that stream models tensor by tensor."""
    p.add_argument("--chunk-mb", type=float, default=None,
                   help="row chunk size per input, MiB of fp32 (bounds memory; default 1)")
    p.add_argument("--out-shard-size", type=float, default=5, help="output shard size, GiB")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")


def streaming_settings(args: argparse.Namespace) -> dict:
    """The options of ``streaming_options`` as MergeOptions' and FfgOptions' fields (the
    chunk size left to their default unless given)."""
    chunk = {} if args.chunk_mb is None else {"chunk_bytes": int(args.chunk_mb * (1 << 20))}
    return {"device": args.device, "out_shard_bytes": int(args.out_shard_size * (1 << 30)),
            "progress": not args.quiet, **chunk}
