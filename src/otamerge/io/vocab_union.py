"""The union vocabulary of ``tokenizer_source: union``, built as mergekit 0.1.5 builds it.

The union starts from the tokenizer base (the base model, else the first model); tokens
it lacks are appended, model by model: plain vocabulary tokens first, then added tokens
with their settings (special, normalized ...) as the first model that has them sets them.
Each model's vocabulary tensors (embed_tokens, lm_head) are re-indexed into the union as
they are read; a token a model lacks gets mergekit's default row: that of the only model
that has it, else the base's, else the mean over the models that have it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from otamerge.errors import OtaMergeError

if TYPE_CHECKING:  # transformers (seconds to import) only where a vocabulary union is built
    from transformers import PreTrainedTokenizerBase

# tensors indexed by token id in their first dimension (Llama, Mistral, Qwen, OLMo: the
# first two; GPT-2, GPT-NeoX, BLOOM: the others)
VOCAB_SUFFIXES = ("embed_tokens.weight", "lm_head.weight", "wte.weight", "embed_in.weight",
                  "embed_out.weight", "word_embeddings.weight")


def vocab_tensors(names: list[str]) -> list[str]:
    return [n for n in names if n.endswith(VOCAB_SUFFIXES)]


def load_tokenizer(folder: Path, label: str) -> PreTrainedTokenizerBase:
    """The folder's tokenizer through transformers (fast, never remote code)."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), use_fast=True, trust_remote_code=False)
    except Exception as exc:  # transformers raises many kinds for a broken or foreign tokenizer
        lines = str(exc).strip().splitlines()
        raise OtaMergeError(f"{label}: cannot load the tokenizer in {folder} "
                            f"({type(exc).__name__}{': ' + lines[0] if lines else ''})") from None


def union_tokenizer(toks: list[PreTrainedTokenizerBase]) -> PreTrainedTokenizerBase:
    """mergekit's build_union_tokenizer: ``toks[0]`` (the tokenizer base) extended by the
    tokens of the others. mergekit visits plain tokens in hash order; here they go by id,
    so the ids of several new plain tokens are reproducible."""
    from transformers import AutoTokenizer

    base_vocab = toks[0].get_vocab()
    plain: dict[str, None] = {}
    added: dict[str, Any] = {}
    for tok in toks:
        for s, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            plain.setdefault(s)
        for info in tok.added_tokens_decoder.values():
            added.setdefault(info.content, info)  # (mergekit: the first settings win)
    with tempfile.TemporaryDirectory() as tmp:  # a copy of the base's, as mergekit makes it
        toks[0].save_pretrained(tmp)
        out = AutoTokenizer.from_pretrained(tmp, use_fast=True, trust_remote_code=False)
    for s in plain:
        if s not in added and s not in base_vocab:
            out.add_tokens(s)
    for info in added.values():
        out.add_tokens(info)
    ids = sorted(out.get_vocab().values())
    if ids != list(range(len(ids))):
        raise OtaMergeError(f"tokenizer_source union: the union vocabulary's {len(ids)} tokens do not have "
                            f"the ids 0..{len(ids) - 1} (two tokens share an id, or ids are skipped)")
    return out


@dataclass
class VocabAlignment:
    """Union id -> row of each input (base first), and the rows a missing token gets."""

    size: int
    perms: list[list[int]]          # per input: union id -> its own row, -1 where it lacks the token
    fills: dict[int, list[int]]     # union id some input lacks -> inputs whose rows are averaged
    inputs: list[Any]               # the checkpoints the rows are read from

    def rows(self, i: int, name: str, a: int, b: int) -> torch.Tensor:
        """Rows ``a:b`` of input ``i``'s tensor ``name`` in union order (fp32, fp64 for
        fp64 inputs: mergekit averages after casting to its compute dtype)."""
        src = self.inputs[i]
        dtype = torch.float64 if src.dtype(name) == torch.float64 else torch.float32
        out = torch.empty((b - a, *src.shape(name)[1:]), dtype=dtype)
        perm = self.perms[i][a:b]
        j = 0
        while j < len(perm):
            if perm[j] < 0:
                out[j] = self._fill(a + j, name, dtype)
                j += 1
                continue
            k = j + 1  # rows consecutive in the input are read as one range
            while k < len(perm) and perm[k] == perm[k - 1] + 1:
                k += 1
            out[j:k] = src.get(name, (perm[j], perm[k - 1] + 1))
            j = k
        return out

    def _fill(self, new: int, name: str, dtype: torch.dtype) -> torch.Tensor:
        """mergekit's arithmetic: zeros, plus each source row in input order, over the count
        (exactly the donor's row for one source, zeros for none)."""
        row = torch.zeros(self.inputs[0].shape(name)[1:], dtype=dtype)
        for s in self.fills[new]:
            old = self.perms[s][new]
            row = row + self.inputs[s].get(name, (old, old + 1))[0].to(dtype)
        return row / len(self.fills[new]) if self.fills[new] else row


def align(union: dict[str, int], vocabs: list[dict[str, int]], inputs: list[Any],
          has_base: bool) -> VocabAlignment:
    """Where each union token's row comes from in every input (mergekit's
    assign_embedding_sources with no per-token settings)."""
    size = len(union)
    perms = [[-1] * size for _ in vocabs]
    for s, new in union.items():
        for perm, vocab in zip(perms, vocabs):
            perm[new] = vocab.get(s, -1)
    fills = {}
    for new in range(size):
        have = [i for i, perm in enumerate(perms) if perm[new] >= 0]
        if len(have) == len(perms):
            continue
        # one holder: its row; the base among several: the base's; else their mean
        fills[new] = [0] if len(have) > 1 and has_base and have[0] == 0 else have
    return VocabAlignment(size, perms, fills, inputs)


class AlignedCheckpoint:
    """A checkpoint whose vocabulary tensors are read in union order; the rest as is."""

    def __init__(self, inner: Any, index: int, alignment: VocabAlignment, names: list[str]):
        self.inner, self.index, self.alignment = inner, index, alignment
        self.vocab_names = set(names)

    def __getattr__(self, attr: str) -> Any:  # path, label, names, dtype, file_of, close ...
        return getattr(self.inner, attr)

    def __contains__(self, name: str) -> bool:
        return name in self.inner

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self.inner.shape(name)
        return (self.alignment.size, *shape[1:]) if name in self.vocab_names else shape

    def get(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        if name not in self.vocab_names:
            return self.inner.get(name, rows)
        a, b = rows or (0, self.alignment.size)
        return self.alignment.rows(self.index, name, a, b)
