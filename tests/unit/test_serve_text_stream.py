"""Generated tokens become text only in whole characters, and stop strings cut the text before them."""

from __future__ import annotations

import pytest
import torch

from forge_trainer.serve.sampling import SamplingParams, choose_tokens, make_generator
from forge_trainer.serve.text_stream import TextStream


class ByteDecoder:
    """Token id = one UTF-8 byte, like the byte fallback of a BPE tokenizer."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(token_ids).decode("utf-8", errors="replace")


def feed(text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], TextStream]:
    stream = TextStream(ByteDecoder(), stop)
    pieces = [stream.push(b) for b in text.encode()]
    pieces.append(stream.finish())
    return pieces, stream


def test_multibyte_characters_are_released_whole() -> None:
    pieces, _ = feed("héllo €!")
    assert "".join(pieces) == "héllo €!"
    assert all("\ufffd" not in p for p in pieces)
    assert pieces[1] == "" and pieces[2] == "é"  # the first byte of é waits for the second


@pytest.mark.parametrize(("text", "stop", "expected"), [
    ("hello world", ("wor",), "hello "),
    ("hello world", ("xyz",), "hello world"),
    ("hello world", ("o", "ll"), "he"),
    ("abcabd", ("abd",), "abc"),
    ("say END now", ("END",), "say "),
])
def test_stop_strings(text: str, stop: tuple[str, ...], expected: str) -> None:
    pieces, stream = feed(text, stop)
    assert "".join(pieces) == expected
    assert stream.stopped == (expected != text)


def test_text_that_may_start_a_stop_string_is_held_back_then_released() -> None:
    stream = TextStream(ByteDecoder(), ("STOP",))
    released = [stream.push(b) for b in b"go ST"]
    assert "".join(released) == "go "  # "ST" might begin "STOP"
    assert stream.push(ord("x")) == "STx"


def test_greedy_picks_the_argmax_and_logit_bias_changes_it() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 2.0]])
    greedy = SamplingParams(max_tokens=1, temperature=0)
    assert choose_tokens(logits, [greedy, greedy], [None, None]) == [1, 0]
    biased = SamplingParams(max_tokens=1, temperature=0, logit_bias={1: -100})
    assert choose_tokens(logits, [biased, greedy], [None, None]) == [2, 0]


def test_top_p_samples_only_from_the_nucleus_and_seed_repeats() -> None:
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    params = SamplingParams(max_tokens=1, temperature=1.0, top_p=0.8, seed=3)
    gen = make_generator(params, torch.device("cpu"))
    draws = [choose_tokens(logits, [params], [gen])[0] for _ in range(300)]
    assert set(draws) == {0, 1}
    again = make_generator(params, torch.device("cpu"))
    assert [choose_tokens(logits, [params], [again])[0] for _ in range(300)] == draws


def test_a_row_samples_the_same_tokens_in_a_mixed_batch_as_alone() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    params = [SamplingParams(max_tokens=1, temperature=0.7, top_p=0.9, seed=1),
              SamplingParams(max_tokens=1, temperature=0),
              SamplingParams(max_tokens=1, temperature=1.3, seed=2, logit_bias={int(logits[2].argmax()): -100}),
              SamplingParams(max_tokens=1, temperature=1.0, top_p=0.5, seed=3)]
    cpu = torch.device("cpu")

    def draws(rows: list[int]) -> list[list[int]]:
        gens = [make_generator(params[r], cpu) for r in rows]
        return [choose_tokens(logits[rows], [params[r] for r in rows], gens) for _ in range(50)]

    together = draws([0, 1, 2, 3])
    for i in range(4):
        assert [step[i] for step in together] == [step[0] for step in draws([i])]
    assert int(logits[2].argmax()) not in {step[2] for step in together}
