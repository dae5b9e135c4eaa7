"""Which merged models the workflow exports: pushed to the hub under which repo ids
(config publish), extracted as LoRA adapters (config lora)."""

from __future__ import annotations

from typing import Sequence


def publish_repos(publish: dict | None, merges: Sequence[str], seeds: Sequence[int]) -> dict[tuple[int, str], str]:
    """{(seed, merge): repo id} of every merged model to push; a one-line ValueError where
    the config names an unknown merge or would push two models to one repo."""
    if not publish:
        return {}
    chosen = _chosen("publish", publish, merges)
    try:
        repos = {(s, m): publish["repo"].format(merge=m, seed=s) for s in seeds for m in chosen}
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"publish.repo {publish['repo']!r}: only {{merge}} and {{seed}} are replaced ({exc})") from None
    if len(set(repos.values())) < len(repos):
        raise ValueError(f"publish.repo {publish['repo']!r} gives several models one repo id: "
                         "put {merge}, and {seed} when there are several seeds, in it")
    return repos


def lora_merges(lora: dict | None, merges: Sequence[str], seeds: Sequence[int]) -> list[tuple[int, str]]:
    """(seed, merge) of every merged model to extract as a LoRA adapter."""
    return [(s, m) for s in seeds for m in _chosen("lora", lora, merges)] if lora else []


def _chosen(section: str, cfg: dict, merges: Sequence[str]) -> list[str]:
    """The section's ``merges`` (default every merge); a one-line ValueError for unknown ones."""
    chosen = cfg.get("merges", list(merges))
    unknown = sorted(set(chosen) - set(merges))
    if unknown:
        raise ValueError(f"{section}.merges: {', '.join(unknown)} not among the merges")
    return chosen
