"""Which tokenizer a merged model gets (``tokenizer_source``), checked against its weights.

``base`` (default): the base model's files (the first model's without a base); a model
reference: that model's files. ``union``: when every model has the same vocabulary (the
same token -> id map and embedding rows), the tokenizer base's files are copied, as
mergekit's output is the tokenizer base's tokenizer, and the files that differ (a chat
template, a pad token, as fine-tuning frameworks write them) are named in the log; when
vocabularies differ, mergekit's union vocabulary is written and every model's embedding
rows are re-indexed into it (vocab_union.py).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otamerge.errors import OtaMergeError
from otamerge.io.vocab_union import AlignedCheckpoint, align, load_tokenizer, union_tokenizer, vocab_tensors

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                   "chat_template.jinja")


def _files(folder: Path) -> dict[str, bytes]:
    return {f: (folder / f).read_bytes() for f in TOKENIZER_FILES if (folder / f).is_file()}


def _vocab_size(folder: Path) -> int | None:
    tj = folder / "tokenizer.json"
    if not tj.is_file():
        return None
    try:
        data = json.loads(tj.read_text())
        vocab = data.get("model", {}).get("vocab")
        # BPE/WordLevel: token -> id; Unigram: a list whose positions are the ids
        ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab or [])))
        ids += [t["id"] for t in data.get("added_tokens", [])]
        return max(ids) + 1 if ids else None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise OtaMergeError(f"{tj} is not a valid tokenizer.json ({type(exc).__name__}: {exc})") from None


@dataclass
class TokenizerPlan:
    """What the merged model's folder gets: copied files or a built union tokenizer."""

    folder: Path | None = None       # tokenizer files copied from here
    tokenizer: Any = None            # or this tokenizer saved (the union vocabulary)
    vocab_size: int | None = None    # config.json's vocab_size where rows were re-indexed

    def write(self, out: Path) -> None:
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(out))
        elif self.folder is not None:
            copy_tokenizer(self.folder, out)
        config = out / "config.json"
        if self.vocab_size is not None and config.is_file():  # (mergekit sets it too)
            data = json.loads(config.read_text())
            data["vocab_size"] = self.vocab_size
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def plan_tokenizer(source: str | None, refs: list[str], base: Any, models: list[Any],
                   moments: list[Any]) -> tuple[TokenizerPlan, Any, list[Any]]:
    """The tokenizer plan, and the inputs (base, models): re-indexed into the union
    vocabulary where ``union`` finds vocabularies that differ, else as they are. ``source``
    is the config's tokenizer_source; ``refs`` name the base (if any) and the models as the
    config does."""
    source = source or "base"
    ckpts = ([base] if base else []) + list(models)
    if source == "union":
        tok, ckpts = _union(ckpts, base is not None, moments)
        return tok, (ckpts[0] if base else None), ckpts[1:] if base else ckpts
    if source == "base":
        folder = ckpts[0].path
    else:
        matches = [c.path for ref, c in zip(refs, ckpts) if source in (ref, str(c.path))]
        if not matches:
            raise OtaMergeError(f"tokenizer_source {source!r} is not base, union or one of the merged models")
        folder = matches[0]
    if not folder.is_dir() or not _files(folder):
        return TokenizerPlan(), base, models
    _check_fits(folder, ckpts[0])
    return TokenizerPlan(folder=folder), base, models


def _check_fits(folder: Path, ckpt: Any, rows: int | None = None) -> None:
    """The tokenizer in ``folder`` has no more tokens than ``ckpt``'s vocabulary rows."""
    vocab, rows = _vocab_size(folder), _rows(ckpt) if rows is None else rows
    if vocab is not None and rows is not None and vocab > rows:
        raise OtaMergeError(f"tokenizer of {folder} has {vocab} tokens but {ckpt.label}'s "
                            f"{vocab_tensors(ckpt.names())[0]} has only {rows} rows")


def _rows(ckpt: Any) -> int | None:
    """Rows of the checkpoint's vocabulary tensors (None without any); they must agree."""
    names = vocab_tensors(ckpt.names())
    rows = {ckpt.shape(n)[0] for n in names}
    if len(rows) > 1:
        raise OtaMergeError(f"{ckpt.label}: vocabulary tensors {', '.join(names)} have different numbers "
                            f"of rows ({', '.join(str(ckpt.shape(n)[0]) for n in names)})")
    return rows.pop() if rows else None


def _union(ckpts: list[Any], has_base: bool, moments: list[Any]) -> tuple[TokenizerPlan, list[Any]]:
    ref = ckpts[0]  # the tokenizer base (mergekit's without a base: an arbitrary model of its set)
    files = [_files(c.path) if c.path.is_dir() else {} for c in ckpts]
    if not any(files):  # (as with base: no tokenizer to write)
        return TokenizerPlan(), ckpts
    for c, f in zip(ckpts, files):
        if not f:
            raise OtaMergeError(f"tokenizer_source union: {c.label} has no tokenizer files in {c.path}; "
                                "add them or use tokenizer_source: base")
    rows = [_rows(c) for c in ckpts]
    if all(f == files[0] for f in files[1:]) and len(set(rows)) == 1:
        _check_fits(ref.path, ref, rows[0])
        return TokenizerPlan(folder=ref.path), ckpts
    toks = [load_tokenizer(c.path, c.label) for c in ckpts]
    vocabs = [t.get_vocab() for t in toks]
    for c, vocab, n in zip(ckpts, vocabs, rows):
        token, last = max(vocab.items(), key=lambda kv: kv[1])
        if n is not None and last >= n:  # (mergekit drops such tokens, or fails on them later)
            raise OtaMergeError(f"tokenizer_source union: {c.label}'s tokenizer has token {token!r} with id "
                                f"{last} but its vocabulary tensors have only {n} rows")
    if all(v == vocabs[0] for v in vocabs[1:]) and len(set(rows)) == 1:
        _log_differences(ckpts, files)
        return TokenizerPlan(folder=ref.path), ckpts
    return _aligned(ckpts, toks, vocabs, rows, has_base, moments)


def _log_differences(ckpts: list[Any], files: list[dict[str, bytes]]) -> None:
    """Name each model's files that differ from the tokenizer base's (generation settings
    too: the output gets the base's, with its config.json)."""
    gen = "generation_config.json"
    files = [{**f, **({gen: (c.path / gen).read_bytes()} if (c.path / gen).is_file() else {})}
             for c, f in zip(ckpts, files)]
    notes = []
    for c, f in zip(ckpts[1:], files[1:]):
        differ = sorted(k for k in set(f) | set(files[0]) if f.get(k) != files[0].get(k))
        if differ:
            notes.append(f"{c.label} ({', '.join(differ)})")
    print(f"tokenizer_source union: the vocabularies are identical; tokenizer files differ from "
          f"{ckpts[0].label}'s in {'; '.join(notes)}; the merged model gets {ckpts[0].label}'s files")


def _aligned(ckpts: list[Any], toks: list[Any], vocabs: list[dict[str, int]], rows: list[int | None],
             has_base: bool, moments: list[Any]) -> tuple[TokenizerPlan, list[Any]]:
    names = vocab_tensors(ckpts[0].names())
    if not names or None in rows:
        raise OtaMergeError("tokenizer_source union: the vocabularies differ but the models have no "
                            "embedding tensor (embed_tokens, lm_head) to re-index")
    if any(m is not None for m in moments):
        raise OtaMergeError("tokenizer_source union: the vocabularies differ, and re-indexing per-model moments "
                            "into a union vocabulary is not supported; merge models with one vocabulary")
    union = union_tokenizer(toks)
    alignment = align(union.get_vocab(), vocabs, ckpts, has_base)
    print(f"tokenizer_source union: the vocabularies differ; union of {alignment.size} tokens "
          f"({alignment.size - len(vocabs[0])} added to {ckpts[0].label}'s); embedding rows re-indexed; "
          f"tokens missing from some model, given mergekit's default rows: {len(alignment.fills)}")
    wrapped = [AlignedCheckpoint(c, i, alignment, names) for i, c in enumerate(ckpts)]
    return TokenizerPlan(tokenizer=union, vocab_size=alignment.size), wrapped


def copy_tokenizer(src: Path, dst: Path) -> None:
    for f in TOKENIZER_FILES:
        if (src / f).is_file():
            shutil.copyfile(src / f, dst / f)
