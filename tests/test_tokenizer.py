import random

from transformers import AutoTokenizer

from otamerge.demo.tasks import TASKS
from otamerge.demo.tokenizer import ALPHABET, build_tokenizer, encode, save_tokenizer


def test_round_trip_of_every_task_string(tmp_path):
    save_tokenizer(build_tokenizer(), tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    rng = random.Random(0)
    for task in TASKS.values():
        for _ in range(50):
            text = "".join(task.sample(rng))
            ids = tok.encode(text, add_special_tokens=False)
            assert len(ids) == len(text)  # one token per character
            assert tok.decode(ids) == text


def test_ids_are_fixed_and_bos_is_added_like_llama(tmp_path):
    save_tokenizer(build_tokenizer(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    tok = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) == 4 + len(ALPHABET)
    assert tok("07")["input_ids"] == [1, 4, 11]
    assert encode(build_tokenizer(), "a") == [4 + ALPHABET.index("a")]
    assert tok.decode(tok("ab+")["input_ids"], skip_special_tokens=True) == "ab+"
