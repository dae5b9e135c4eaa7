"""Which merged models the workflow pushes to the hub, and under which repo ids (config publish)."""

from __future__ import annotations

from typing import Sequence


def publish_repos(publish: dict | None, merges: Sequence[str], seeds: Sequence[int]) -> dict[tuple[int, str], str]:
    """{(seed, merge): repo id} of every merged model to push; a one-line ValueError where
    the config names an unknown merge or would push two models to one repo."""
    if not publish:
        return {}
    chosen = publish.get("merges", list(merges))
    unknown = sorted(set(chosen) - set(merges))
    if unknown:
        raise ValueError(f"publish.merges: {', '.join(unknown)} not among the merges")
    try:
        repos = {(s, m): publish["repo"].format(merge=m, seed=s) for s in seeds for m in chosen}
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"publish.repo {publish['repo']!r}: only {{merge}} and {{seed}} are replaced ({exc})") from None
    if len(set(repos.values())) < len(repos):
        raise ValueError(f"publish.repo {publish['repo']!r} gives several models one repo id: "
                         "put {merge}, and {seed} when there are several seeds, in it")
    return repos
