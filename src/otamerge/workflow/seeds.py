"""The seeds a configuration runs.

``seeds: [0, 1, 2]`` runs the whole family (demo training, grafts, merges, evaluation)
once per seed; ``seed: N`` is the older spelling of ``seeds: [N]``. Imports no torch: the
workflow reads it while building the DAG.
"""

from __future__ import annotations

from typing import Any


def config_seeds(cfg: dict[str, Any]) -> list[int]:
    """The config's seeds in their order: ``seeds``, or ``[seed]``.

    Both keys at once is refused rather than one silently winning: with Snakemake's
    ``--configfile`` merged over config/config.yaml (which sets ``seeds``), an added
    ``seed: N`` would otherwise be ignored."""
    if "seed" in cfg and "seeds" in cfg:
        raise ValueError(f"the config sets both seed ({cfg['seed']}) and seeds ({cfg['seeds']}): give one; "
                         "a config file merged over config/config.yaml, which sets seeds, must set seeds")
    if "seeds" in cfg:
        seeds = [int(s) for s in cfg["seeds"]]
    elif "seed" in cfg:
        seeds = [int(cfg["seed"])]
    else:
        raise ValueError("the config needs seeds (a list of seeds) or seed")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"seeds must be distinct non-negative integers, at least one: {seeds}")
    return seeds
