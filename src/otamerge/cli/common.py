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
    p.add_argument("--chunk-mb", type=float, default=4, help="row chunk size per input, MiB of fp32 (bounds memory)")
    p.add_argument("--out-shard-size", type=float, default=5, help="output shard size, GiB")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
