"""Tests of lightning_rlhf.data.collate: truncation sides, EOS placement, padding sides and exact
response-mask positions for every format, with the built-in character tokenizer.

Token ids of that tokenizer: <pad> 0, <bos> 1, <eos> 2, digits '0'..'9' 4..13, '+' 14, '=' 15.
"""

import datasets
import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lightning_rlhf.data.collate import (
    RLHFCollator,
    pad,
    tokenize_dataset,
    tokenize_prompts,
    tokenize_responses,
)
from lightning_rlhf.data.formats import DataError
from lightning_rlhf.data.tasks import get_tokenizer

PAD, BOS, EOS, PLUS, EQ = 0, 1, 2, 14, 15


def d(digit: int) -> int:
    """Token id of a digit character."""
    return 4 + digit


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("arithmetic")


def collate(tok, rows: list[dict], format: str, with_prompts: bool = False, **limits) -> dict:
    """Tokenise ``rows`` like the data module does and collate them into one batch."""
    limits = {"max_prompt_length": 64, "max_response_length": 16, **limits}
    ds = tokenize_dataset(datasets.Dataset.from_list(rows), tok, format, **limits)
    ds = ds.add_column("index", list(range(len(ds))))
    return RLHFCollator(format, tok.pad_token_id, with_prompts)(list(ds))


def test_token_ids_of_the_builtin_tokenizer(tok):
    assert tok("1+2=")["input_ids"] == [BOS, d(1), PLUS, d(2), EQ]
    assert (tok.pad_token_id, tok.eos_token_id) == (PAD, EOS)


def test_prompts_keep_special_tokens_and_are_left_truncated(tok):
    ids = tokenize_prompts(["12+34=", "1+2="], tok, 4)
    assert ids == [[PLUS, d(3), d(4), EQ], [d(1), PLUS, d(2), EQ]]
    assert tokenize_prompts(["1+2="], tok, 64) == [[BOS, d(1), PLUS, d(2), EQ]]


def test_responses_are_right_truncated_and_end_with_eos(tok):
    assert tokenize_responses(["12345", "7", ""], tok, 3) == [[d(1), d(2), EOS], [d(7), EOS], [EOS]]
    assert tokenize_responses(["12345"], tok, 1) == [[EOS]]  # EOS counts within the limit
    with pytest.raises(DataError, match="max_response_length"):
        tokenize_responses(["1"], tok, 0)


def test_pad_sides():
    ids, mask = pad([[5, 6, 7], [8], []], 0, left=True)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    ids, mask = pad([[5, 6, 7], [8]], 9, left=False)
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_response_batch_exact_positions(tok):
    rows = [
        {"prompt": "1+2=", "response": "3", "reward": 1.0},
        {"prompt": "10+20=", "response": "30", "reward": 0.25},
    ]
    b = collate(tok, rows, "response")
    assert b["input_ids"].tolist() == [
        [BOS, d(1), PLUS, d(2), EQ, d(3), EOS, PAD, PAD, PAD],
        [BOS, d(1), d(0), PLUS, d(2), d(0), EQ, d(3), d(0), EOS],
    ]
    assert b["attention_mask"].tolist() == [[1] * 7 + [0] * 3, [1] * 10]
    assert b["response_mask"].tolist() == [
        [0, 0, 0, 0, 0, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 1, 1, 1],
    ]
    assert b["prompt_lengths"].tolist() == [5, 7]
    assert b["reward"].dtype == torch.float32 and b["reward"].tolist() == [1.0, 0.25]
    assert b["prompt"] == ["1+2=", "10+20="] and b["response"] == ["3", "30"]
    assert b["index"].tolist() == [0, 1] and b["index"].dtype == torch.long
    assert "prompt_input_ids" not in b


def test_response_batch_truncation_sides(tok):
    rows = [{"prompt": "12+34=", "response": "4681"}]
    b = collate(tok, rows, "response", max_prompt_length=3, max_response_length=3)
    assert b["input_ids"].tolist() == [[d(3), d(4), EQ, d(4), d(6), EOS]]
    assert b["response_mask"].tolist() == [[0, 0, 0, 1, 1, 1]]
    assert b["prompt_lengths"].tolist() == [3]


def test_response_batch_without_rewards_has_no_reward_key(tok):
    b = collate(tok, [{"prompt": "1+1=", "response": "2"}], "response")
    assert "reward" not in b and b["input_ids"].shape == (1, 7)


def test_with_prompts_adds_left_padded_prompts(tok):
    rows = [{"prompt": "1+2=", "response": "3"}, {"prompt": "10+20=", "response": "30"}]
    b = collate(tok, rows, "response", with_prompts=True)
    assert b["prompt_input_ids"].tolist() == [
        [PAD, PAD, BOS, d(1), PLUS, d(2), EQ],
        [BOS, d(1), d(0), PLUS, d(2), d(0), EQ],
    ]
    assert b["prompt_attention_mask"].tolist() == [[0, 0, 1, 1, 1, 1, 1], [1] * 7]


def test_prompt_batch_is_left_padded(tok):
    b = collate(tok, [{"prompt": "1+2="}, {"prompt": "10+2="}], "prompt")
    assert set(b) == {"prompt_input_ids", "prompt_attention_mask", "prompt", "index"}
    assert b["prompt_input_ids"].tolist() == [
        [PAD, BOS, d(1), PLUS, d(2), EQ],
        [BOS, d(1), d(0), PLUS, d(2), EQ],
    ]
    assert b["prompt_attention_mask"].tolist() == [[0, 1, 1, 1, 1, 1], [1] * 6]


def test_pair_batch_chosen_first(tok):
    rows = [
        {
            "prompt": "1+2=",
            "chosen": "3",
            "rejected": "12",
            "chosen_reward": 1.0,
            "rejected_reward": 0.0,
        },
        {
            "prompt": "5+5=",
            "chosen": "10",
            "rejected": "0",
            "chosen_reward": 1.0,
            "rejected_reward": 0.5,
        },
    ]
    b = collate(tok, rows, "pair")
    assert b["input_ids"].shape == b["attention_mask"].shape == b["response_mask"].shape
    assert b["input_ids"].shape == (2, 2, 8)
    p = [BOS, d(1), PLUS, d(2), EQ]
    assert b["input_ids"][0].tolist() == [p + [d(3), EOS, PAD], p + [d(1), d(2), EOS]]
    assert b["response_mask"][0].tolist() == [[0] * 5 + [1, 1, 0], [0] * 5 + [1, 1, 1]]
    assert b["attention_mask"][0].tolist() == [[1] * 7 + [0], [1] * 8]
    assert b["rewards"].tolist() == [[1.0, 0.0], [1.0, 0.5]]
    assert b["rewards"].dtype == torch.float32
    assert b["prompt_lengths"].tolist() == [5, 5]
    assert b["responses"] == [["3", "12"], ["10", "0"]]


def test_ranked_batch_shapes_and_masks(tok):
    rows = [
        {"prompt": "1+1=", "responses": ["2", "3", "22"], "rewards": [1.0, 0.5, 0.0]},
        {"prompt": "2+2=", "responses": ["4", "5", "44"], "rewards": [1.0, 0.5, 0.0]},
    ]
    b = collate(tok, rows, "ranked", with_prompts=True)
    assert b["input_ids"].shape == (2, 3, 8) and b["rewards"].shape == (2, 3)
    assert b["response_mask"].sum(-1).tolist() == [[2, 2, 3], [2, 2, 3]]
    assert b["input_ids"][1, 2].tolist() == [BOS, d(2), PLUS, d(2), EQ, d(4), d(4), EOS]
    assert b["prompt_input_ids"].shape == (2, 5)
    assert b["responses"][0] == ["2", "3", "22"]


def test_chat_template_prompt_gets_no_second_bos():
    tok = get_tokenizer("arithmetic")
    tok.chat_template = (
        "{{ bos_token }}{{ messages[0]['content'] }}={% if add_generation_prompt %} {% endif %}"
    )
    ids = tokenize_prompts(["1+2"], tok, 64, chat_template=True)
    assert ids == [[BOS, d(1), PLUS, d(2), EQ, tok.convert_tokens_to_ids(" ")]]


def test_prompt_empty_after_tokenisation_names_the_row():
    core = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "a": 2, "<unk>": 3}, "<unk>"))
    core.normalizer = normalizers.Replace("~", "")  # '~' vanishes: '~~' tokenises to nothing
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    strip_tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")
    ds = datasets.Dataset.from_list([{"prompt": "a"}, {"prompt": "~~"}])
    with pytest.raises(DataError) as err:
        tokenize_dataset(
            ds,
            strip_tok,
            "prompt",
            max_prompt_length=8,
            max_response_length=4,
            source="prompts.csv",
        )
    msg = str(err.value)
    assert "prompts.csv" in msg and "row 1" in msg and "empty after tokenisation" in msg
    assert "\n" not in msg
