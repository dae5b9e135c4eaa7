"""A model folder's config.json checked against its weights' headers.

A config that disagrees with the weights (a wrong vocab_size after resizing the
embeddings, a config copied from another size) makes a merged model that loads with
errors or silently wrong; it is caught here, before any output is written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from otamerge.errors import OtaMergeError

CONFIG_FILE = "config.json"

# config key -> (tensor, which dimension of it), for Llama-style decoders (Llama, Mistral,
# Qwen2, OLMo 2 ...); keys or tensors a model does not have are not checked
_DIMENSIONS = {
    "vocab_size": ("model.embed_tokens.weight", 0),
    "hidden_size": ("model.embed_tokens.weight", 1),
    "intermediate_size": ("model.layers.0.mlp.up_proj.weight", 0),
}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def read_model_config(folder: Path, label: str) -> dict | None:
    """The folder's config.json (None if it has none)."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OtaMergeError(f"{label}: {path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise OtaMergeError(f"{label}: {path} is not a JSON object")
    return config


def check_config(folder: Path, label: str, names: list[str],
                 shape: Callable[[str], tuple[int, ...]]) -> None:
    """config.json's sizes equal those of the tensors ``names`` (shapes from ``shape``)."""
    config = read_model_config(folder, label)
    if config is None:
        return
    path = folder / CONFIG_FILE
    have = set(names)
    for key, (tensor, dim) in _DIMENSIONS.items():
        if key in config and tensor in have and len(shape(tensor)) > dim and config[key] != shape(tensor)[dim]:
            raise OtaMergeError(f"{label}: {path} says {key}={config[key]!r} but tensor {tensor} has "
                                f"shape {list(shape(tensor))}")
    layers = {int(m[1]) for n in names if (m := _LAYER.match(n))}
    if "num_hidden_layers" in config and layers and config["num_hidden_layers"] != len(layers):
        raise OtaMergeError(f"{label}: {path} says num_hidden_layers={config['num_hidden_layers']!r} but the "
                            f"weights have {len(layers)} layers")
