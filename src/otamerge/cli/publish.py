"""``otamerge`` subcommands: a merged model's card, and publishing it."""

from __future__ import annotations

import argparse


def _cmd_card(args: argparse.Namespace) -> None:
    from otamerge.card import write_card

    out = write_card(args.model_dir, args.out, args.thresholds, args.scores or (), args.title)
    print(f"model card written to {out}")


def _cmd_push(args: argparse.Namespace) -> None:
    from otamerge.io.publish import push

    done = push(args.model_dir, args.repo_id, args.card, private=not args.public, message=args.message)
    print(f"{len(done['files'])} files pushed to {done['url']} (commit {done['commit']})")
    if args.out:
        from otamerge.io.atomic import write_json

        write_json(args.out, done)


def add_commands(sub) -> None:
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
