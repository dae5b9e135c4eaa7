from types import SimpleNamespace

import pytest
import torch

from otamerge.demo.model import make_config, new_model, token_table
from otamerge.demo.tasks import eval_set
from otamerge.demo.tokenizer import build_tokenizer
from otamerge.errors import OtaMergeError
from otamerge.evaluation.builtin import evaluate, exact_match, greedy_generate, score_examples
from otamerge.families import get_family, token_accuracy

EXAMPLES = eval_set("add", 30, seed=0) + eval_set("reverse", 30, seed=0)


def test_exact_match_counts_equal_strings():
    assert exact_match(["a", "b", "c", "x"], ["a", "b", "c", "d"]) == 0.75
    assert exact_match(["12"], ["12"]) == 1.0 and exact_match(["120"], ["12"]) == 0.0


class Successor(torch.nn.Module):
    """A bigram model: after digit d the argmax is d + 1, after 9 (or anything else) EOS.
    Greedy decoding after a prompt ending in 7 gives "89"."""

    def __init__(self, tok):
        super().__init__()
        table = token_table(tok)
        self.logits = torch.zeros(len(tok), len(tok))
        self.logits[:, tok.eos_token_id] = 1.0
        for d in range(9):
            self.logits[table[str(d)], table[str(d + 1)]] = 2.0

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0, use_cache=False, cache=None):
        logits = self.logits[input_ids]  # no context beyond the last token: the shared prefix's cache is empty
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits,
                               cache=SimpleNamespace(batch_repeat_interleave=lambda n: None))


def test_scores_from_one_teacher_forced_pass_equal_greedy_decoding_of_every_prompt():
    """Only prompts not answered under teacher forcing are decoded; the exact match must be
    the one of decoding them all: answers right, wrong, a prefix of the greedy answer, and
    right but longer than the decoding budget."""
    tok = build_tokenizer()
    model, fam = Successor(tok), get_family("tiny")
    examples = [("1+7", "89"), ("2+3", "456789"), ("3+3", "45"), ("4+4", "5678"), ("5+6", "7889"), ("6+2", "3")]
    for k in (3, 7):
        full = exact_match(greedy_generate(model, tok, [p for p, _ in examples], k), [a for _, a in examples])
        got = score_examples(fam, model, tok, examples, k)
        assert got["exact_match"] == full == (1 / 6 if k == 3 else 2 / 6)
        # per token (answer and EOS): 3/3, 7/7, 2/3, 4/5, 4/5 (misses the second 8 only), 1/2
        assert got["token_accuracy"] == token_accuracy(fam, model, tok, examples)
        assert abs(got["token_accuracy"] - 21 / 25) < 1e-6


def _model(seed=0):
    tok = build_tokenizer()
    model = new_model(make_config(tok, {"hidden_size": 32, "intermediate_size": 64, "num_heads": 2}), seed)
    return model.eval(), tok


def test_greedy_generate_equals_transformers_generate_one_prompt_at_a_time():
    model, tok = _model()
    prompts = [p for p, _ in EXAMPLES[::7]]
    ours = greedy_generate(model, tok, prompts, 6)
    for prompt, got in zip(prompts, ours):
        ids = torch.tensor([[tok.bos_token_id] + tok.encode(prompt, add_special_tokens=False)])
        gen = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        gen = gen[: gen.index(tok.eos_token_id)] if tok.eos_token_id in gen else gen
        assert got == tok.decode(gen)


def test_token_accuracy_equals_a_direct_per_token_count():
    model, tok = _model(seed=3)
    examples = EXAMPLES[:10]
    right = total = 0
    with torch.no_grad():
        for prompt, answer in examples:
            seq = [tok.bos_token_id] + tok.encode(prompt + answer, add_special_tokens=False) + [tok.eos_token_id]
            logits = model(input_ids=torch.tensor([seq])).logits[0]
            start = 1 + len(prompt)
            for pos in range(start, len(seq)):
                right += int(logits[pos - 1].argmax()) == seq[pos]
                total += 1
    assert abs(token_accuracy(get_family("tiny"), model, tok, examples) - right / total) < 1e-12


def test_a_split_other_than_test_or_validation_is_refused():
    # the workflow's script passes each output's name as the split: a misnamed output would
    # otherwise have scored the validation prompts under it
    with pytest.raises(OtaMergeError, match="split 'scores': use 'test' or 'validation'"):
        evaluate(None, None, ["add"], 4, 0, "base", split="scores")
