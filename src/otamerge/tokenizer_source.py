"""Which tokenizer a merged model gets (``tokenizer_source``), checked against its weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from otamerge.errors import OtaMergeError

if TYPE_CHECKING:
    from otamerge.config import MergeConfig
    from otamerge.merge import Plan

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                   "chat_template.jinja")


def _files(folder: Path) -> dict[str, bytes]:
    return {f: (folder / f).read_bytes() for f in TOKENIZER_FILES if (folder / f).is_file()}


def _vocab_size(folder: Path) -> int | None:
    tj = folder / "tokenizer.json"
    if not tj.is_file():
        return None
    data = json.loads(tj.read_text())
    vocab = data.get("model", {}).get("vocab")
    # BPE/WordLevel: token -> id; Unigram: a list whose positions are the ids
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab or [])))
    ids += [t["id"] for t in data.get("added_tokens", [])]
    return max(ids) + 1 if ids else None


def tokenizer_dir(cfg: "MergeConfig", plan: "Plan") -> Path | None:
    """The folder whose tokenizer files the merged model gets, or None if it has none.

    ``base`` (default): the base (or first model); a model reference: that model;
    ``union``: all tokenizers must be identical (then it is copied); building a
    vocabulary union is refused with the names of the models that differ.
    """
    source = cfg.tokenizer_source or "base"
    inputs = [(cfg.base, plan.base.path)] if plan.base else []
    inputs += [(spec.ref, c.path) for spec, c in zip(cfg.models, plan.models)]
    if source == "base":
        folder = plan.reference.path
    elif source == "union":
        ref_label, folder = inputs[0]
        ref_files = _files(folder)
        differ = [label for label, path in inputs[1:] if _files(path) != ref_files]
        if differ:
            raise OtaMergeError(f"tokenizer_source union: tokenizers of {', '.join(differ)} differ from "
                                f"{ref_label}; merging different vocabularies is not supported")
    else:
        matches = [path for ref, path in inputs if source in (ref, str(path))]
        if not matches:
            raise OtaMergeError(f"tokenizer_source {source!r} is not base, union or one of the merged models")
        folder = matches[0]
    if not folder.is_dir() or not _files(folder):
        return None
    vocab = _vocab_size(folder)
    embed = [n for n in plan.names if n.endswith("embed_tokens.weight")]
    if vocab is not None and embed and vocab > plan.reference.shape(embed[0])[0]:
        raise OtaMergeError(f"tokenizer of {folder} has {vocab} tokens but {embed[0]} has only "
                            f"{plan.reference.shape(embed[0])[0]} rows")
    return folder


def copy_tokenizer(src: Path, dst: Path) -> None:
    for f in TOKENIZER_FILES:
        if (src / f).is_file():
            shutil.copyfile(src / f, dst / f)
