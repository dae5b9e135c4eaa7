import torch

from otamerge.demo.model import make_config, new_model
from otamerge.demo.tasks import eval_set
from otamerge.demo.tokenizer import build_tokenizer
from otamerge.evaluation.builtin import exact_match, greedy_generate, score_task
from otamerge.families import get_family, token_accuracy

EXAMPLES = eval_set("add", 30, seed=0) + eval_set("reverse", 30, seed=0)


def test_oracle_scores_one_and_a_wrong_oracle_scores_zero():
    answers = dict(EXAMPLES)

    def oracle(prompts, k):
        return [answers[p] for p in prompts]

    def wrong(prompts, k):
        return [answers[p] + "0" for p in prompts]  # right answer, then no EOS

    assert score_task(oracle, EXAMPLES, 6) == 1.0
    assert score_task(wrong, EXAMPLES, 6) == 0.0
    assert exact_match(["a", "b", "c", "x"], ["a", "b", "c", "d"]) == 0.75


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
