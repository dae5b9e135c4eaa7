"""The perplexity backend against exp(mean NLL) computed directly, token by token."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from checkpoints import make_family
from otamerge.errors import OtaMergeError
from otamerge.evaluation.perplexity import evaluate, negative_log_likelihood, token_ids, windows

TEXT = "07+45=052 <abc=cba #rjm=jmr >stz=tus ?TYK=OZY 13+29=042 <hgf=fgh"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = make_family(tmp_path_factory.mktemp("fam"), n_experts=0, seed=4, hidden=16, scale=1.0)["base"]
    return (AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(folder), folder)


def _direct_nll(model, ids, context):
    """Each token j >= 1 from at most ``context`` tokens before it, one forward pass per token."""
    total = 0.0
    with torch.no_grad():
        for j in range(1, len(ids)):
            ctx = ids[max(0, j - context):j]
            logits = model(input_ids=ctx[None]).logits[0, -1].double()
            total -= float(torch.log_softmax(logits, -1)[ids[j]])
    return total


def test_one_window_is_exp_of_the_mean_nll(model, tmp_path):
    m, tok, _ = model
    ids = token_ids(tok, TEXT[:25])
    assert ids[0] == tok.bos_token_id and len(ids) == 26
    nll, n = negative_log_likelihood(m, ids, max_length=32, stride=16)
    assert n == 25
    with torch.no_grad():
        logp = torch.log_softmax(m(input_ids=ids[None]).logits[0, :-1].double(), -1)
    direct = -float(sum(logp[i, ids[i + 1]] for i in range(25)))
    assert nll == pytest.approx(direct, rel=1e-12)
    (tmp_path / "t.txt").write_text(TEXT[:25])
    (row,) = evaluate(m, tok, {"heldout": tmp_path / "t.txt"}, "base")
    assert row == {"model": "base", "task": "heldout", "metric": "perplexity",
                   "score": pytest.approx(math.exp(direct / 25), rel=1e-12), "n": 25, "backend": "perplexity"}


@pytest.mark.parametrize("max_length, stride", [(8, 1), (8, 7), (5, 2)])
def test_sliding_windows_score_each_token_once_with_the_context_they_promise(model, max_length, stride):
    m, tok, _ = model
    ids = token_ids(tok, TEXT)
    nll, n = negative_log_likelihood(m, ids, max_length, stride)
    assert n == len(ids) - 1
    spans = windows(len(ids), max_length, stride)
    assert [t for _, first, end in spans for t in range(first, end)] == list(range(1, len(ids)))
    if stride == 1:  # every token sees the max_length - 1 tokens before it
        assert nll == pytest.approx(_direct_nll(m, ids, max_length - 1), rel=1e-9)
    # the weakest context any token gets is max_length - stride tokens
    assert min(first - begin for begin, first, _ in spans[1:]) == max_length - stride


def test_bad_settings_are_refused(model, tmp_path):
    m, tok, _ = model
    with pytest.raises(OtaMergeError, match="stride 8 must be at least 1 and below max_length 8"):
        windows(100, 8, 8)
    with pytest.raises(OtaMergeError, match="max_length 64 exceeds the model's 32 positions"):
        evaluate(m, tok, {"t": tmp_path / "none.txt"}, "base", max_length=64)
    with pytest.raises(OtaMergeError, match="none.txt: cannot read"):
        evaluate(m, tok, {"t": tmp_path / "none.txt"}, "base")
