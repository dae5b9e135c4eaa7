"""The model card of a merged model folder, from the merge config that made it
(io/model_card.py renders it for the hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from otamerge.config import MergeConfig, parse_config, read_config
from otamerge.errors import OtaMergeError
from otamerge.io.atomic import atomic_file
from otamerge.io.model_card import read_choices, read_scores, render, sources
from otamerge.names import CARD, MERGE_CONFIG


def card_text(cfg: MergeConfig, choices: list[dict] | None = None, scores: list[dict] | None = None,
              title: str | None = None) -> str:
    """The card of a merge by its parsed config: the base and models as the merge read them."""
    return render(cfg.raw, sources(cfg.base, [m.ref for m in cfg.models]), choices, scores, title)


def write_card(model_dir: str | Path, out: str | Path | None = None, choices: str | Path | None = None,
               score_files: Iterable[str | Path] = (), title: str | None = None) -> Path:
    """Write the card of the merged model in ``model_dir`` (its merge_config.yml) to
    ``out`` (default: the model's own README.md)."""
    model_dir = Path(model_dir)
    config = model_dir / MERGE_CONFIG
    if not config.is_file():
        raise OtaMergeError(f"{model_dir}: no merge_config.yml (not a merged model folder)")
    text = card_text(parse_config(read_config(config)), read_choices(choices), read_scores(score_files), title)
    out = Path(out) if out else model_dir / CARD
    with atomic_file(out) as fh:
        fh.write(text)
    return out
