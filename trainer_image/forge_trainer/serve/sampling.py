"""Choosing the next token of each sequence in a batch: greedy, or temperature / top-p sampling.

Each sequence samples with its own `torch.Generator`, so a request with a `seed` gets the same tokens
whatever else shares the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one request's tokens are chosen and when its generation stops."""

    max_tokens: int
    """Most tokens to generate."""
    temperature: float = 1.0
    """Softmax temperature; 0 is greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: sample among the most likely tokens whose probabilities sum to top_p."""
    stop: tuple[str, ...] = ()
    """Strings that end generation; the returned text stops before them."""
    seed: int | None = None
    """Seed of this request's sampling; the same seed gives the same tokens."""
    logit_bias: dict[int, float] = field(default_factory=dict)
    """Added to the logits of these token ids before choosing (-100 bans a token)."""

    @property
    def greedy(self) -> bool:
        """Whether the most likely token is always chosen."""
        return self.temperature == 0.0 or self.top_p == 0.0


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """The random generator of one request: seeded from `params.seed`, or randomly; None when greedy."""
    if params.greedy:
        return None
    gen = torch.Generator(device=device)
    if params.seed is None:
        gen.seed()
    else:
        gen.manual_seed(params.seed)
    return gen


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_probs, order = torch.sort(probs, descending=True)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    # keep a token if the mass before it is below top_p: the most likely token is always kept
    drop = (cumulative - sorted_probs) >= top_p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def choose_tokens(logits: torch.Tensor, params: list[SamplingParams],
                  generators: list[torch.Generator | None]) -> list[int]:
    """The next token of each row of `logits` (batch x vocab), chosen as that row's params say."""
    logits = logits.float()
    if any(p.logit_bias for p in params):
        logits = logits.clone()
        for row, p in enumerate(params):
            for token, bias in p.logit_bias.items():
                logits[row, token] += bias
    chosen = torch.argmax(logits, dim=-1).tolist()
    for row, p in enumerate(params):
        if p.greedy:
            continue
        probs = torch.softmax(logits[row] / p.temperature, dim=-1)
        if p.top_p < 1.0:
            probs = _top_p_filter(probs, p.top_p)
        chosen[row] = int(torch.multinomial(probs, 1, generator=generators[row]).item())
    return [int(t) for t in chosen]
