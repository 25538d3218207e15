"""The packing pass's cached encoder gives exactly the tokenizer's ids, or falls back to the tokenizer."""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers

from forge_trainer.data.encode import FastEncoder, supports_fast_path
from forge_trainer.data.tokenizer import train_tokenizer
from tests.support.raw_corpus import sentence_doc

TRICKY = [
    "Plain words, then numbers 12345 and 3.14159; contractions: it's, we're, they'll, I'd.",
    "Ünïcödé café naïve — “quotes” and ‘single’ … 日本語のテキスト 한국어 العربية 🙂👍🏽",
    "Whitespace:   three spaces,\ttab,\n\nnewlines,  \n trailing   ",
    "Special tokens inline <|endoftext|> and <|im_start|>user\nhi<|im_end|> stay special.",
    "superscripts ² ³ and roman Ⅷ and fullwidth １２３ and symbols $%^&*()_+=[]{}|\\;:'\",.<>/?`~",
    "",
    "x",
]


def _tokenizer() -> Tokenizer:
    return train_tokenizer(iter([sentence_doc(i) for i in range(50)] + TRICKY), vocab_size=600)


def test_fast_path_matches_encode_batch_exactly() -> None:
    tok = _tokenizer()
    assert supports_fast_path(tok)
    texts = TRICKY + [sentence_doc(i) for i in range(60, 80)]
    expected = [i for e in tok.encode_batch(texts, add_special_tokens=False) for i in [*e.ids, 0]]
    encoder = FastEncoder(tok, eos_id=0)
    first = encoder.encode_flat(texts, "uint32")
    assert encoder.fast  # the first batch's check passed
    second = encoder.encode_flat(texts, "uint32")  # now from the cache, unchecked
    assert first.tolist() == expected
    assert second.tolist() == expected
    assert encoder.count(texts) == [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]


def test_other_tokenizers_use_the_tokenizer_itself() -> None:
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    assert not supports_fast_path(tok)
    encoder = FastEncoder(tok, eos_id=0)
    assert encoder.encode_flat(["hello world", "world"], "uint16").tolist() == [1, 2, 0, 2, 0]
    assert np.array_equal(encoder.count(["hello there world"]), [3])
