"""The dataset's tokenizer: a byte-level BPE trained on the cleaned corpus with Hugging Face
`tokenizers`, or an existing tokenizer.json reused by URI. Either way it is saved as tokenizer.json,
which `transformers.PreTrainedTokenizerFast(tokenizer_file=...)` loads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN, IM_START, IM_END]
"""Special tokens every trained tokenizer has, with these ids (0..3): end of text, padding, chat turns."""


def new_bpe_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE tokenizer (GPT-2 style pre-tokenization, no added prefix space)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def train_tokenizer(texts: Iterator[str], vocab_size: int, length: int | None = None) -> Tokenizer:
    """A byte-level BPE tokenizer of at most `vocab_size` tokens (special tokens included) trained on
    `texts`; every byte is in the vocabulary, so any text round-trips."""
    tok = new_bpe_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return tok


def special_token_ids(tok: Tokenizer) -> tuple[int, int | None]:
    """(eos id, pad id) of a tokenizer; a reused tokenizer must have an end-of-text token."""
    eos = None
    for candidate in (EOS_TOKEN, "</s>", "<|end_of_text|>", "<eos>"):
        eos = tok.token_to_id(candidate)
        if eos is not None:
            break
    if eos is None:
        raise ValueError(f"tokenizer has no end-of-text token ({EOS_TOKEN} or </s>)")
    pad = None
    for candidate in (PAD_TOKEN, "<pad>", "[PAD]"):
        pad = tok.token_to_id(candidate)
        if pad is not None:
            break
    return eos, pad


def load_tokenizer(path: Path) -> Tokenizer:
    """A tokenizer from a tokenizer.json file."""
    return Tokenizer.from_file(str(path))


def token_dtype(vocab_size: int) -> str:
    """numpy dtype that holds every id of a vocabulary: uint16 when it fits, else uint32."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"
