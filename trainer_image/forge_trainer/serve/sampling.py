"""Choosing the next token of each sequence in a batch: greedy, or temperature / top-p sampling.

Each sequence samples with its own `torch.Generator`, so a request with a `seed` gets the same tokens
whatever else shares the batch. A row that cannot be sampled (NaN logits, probabilities that are not
finite) gets NO_TOKEN instead of failing the batch: one bad sequence never fails the others.

Log-probabilities (the API's `logprobs`) are log_softmax in float32 of the logits the model produced,
before logit_bias, temperature and top-p (as vLLM's default `raw_logprobs`): the score of a token
under the model, whatever way it was chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

NO_TOKEN = -1
"""What choose_tokens gives a row it could not choose a token for."""


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
    logprobs: int | None = None
    """Report each generated token's log-probability and this many most likely alternatives; None: none."""
    echo: bool = False
    """Report the prompt's tokens too, with their log-probabilities when `logprobs` is set."""

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


def bias_tensors(params: SamplingParams, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`params.logit_bias` as (token ids, values) tensors on `device`, made once per request; None if empty."""
    if not params.logit_bias:
        return None
    ids = torch.tensor(list(params.logit_bias), dtype=torch.long, device=device)
    values = torch.tensor(list(params.logit_bias.values()), dtype=torch.float32, device=device)
    return ids, values


def _top_p_filter(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Rows of `probs` (batch x vocab) cut to their nucleus; `top_p` is batch x 1."""
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    # keep a token if the mass before it is below top_p: the most likely token is always kept
    drop = (cumulative - sorted_probs) >= top_p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def choose_tokens(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
                  biases: list[tuple[torch.Tensor, torch.Tensor] | None] | None = None) -> list[int]:
    """The next token of each row of `logits` (batch x vocab), chosen as that row's params say; NO_TOKEN for
    a row whose logits hold NaN or whose sampling probabilities are not finite.

    `biases` are the rows' `bias_tensors` when the caller keeps them; otherwise they are made here. The
    work is one tensor operation per step for the whole batch, plus one per biased row and one draw per
    sampled row (each row draws from its own generator)."""
    logits = logits.float()
    if biases is None:
        biases = [bias_tensors(p, logits.device) for p in params]
    if any(b is not None for b in biases):
        logits = logits.clone()
        for row, bias in enumerate(biases):
            if bias is not None:
                logits[row].index_add_(0, bias[0], bias[1])
    # one device-to-host copy for both: the greedy choice and whether a row's logits hold NaN
    chosen, nan_rows = torch.stack((torch.argmax(logits, dim=-1), torch.isnan(logits).any(dim=-1).long())).tolist()
    broken = [bool(b) for b in nan_rows]
    sampled = [row for row, p in enumerate(params) if not p.greedy and not broken[row]]
    if sampled:
        temperature = torch.tensor([[params[r].temperature] for r in sampled], device=logits.device)
        probs = torch.softmax(logits[sampled] / temperature, dim=-1)
        if any(params[r].top_p < 1.0 for r in sampled):
            top_p = torch.tensor([[params[r].top_p if params[r].top_p < 1.0 else float("inf")] for r in sampled],
                                 device=logits.device)
            probs = _top_p_filter(probs, top_p)
        # e.g. a temperature so small that logits / temperature overflow: inf - inf in the softmax is NaN
        unusable = (~torch.isfinite(probs).all(dim=-1) | (probs.sum(dim=-1) <= 0)).tolist()
        for k, row in enumerate(sampled):
            if unusable[k]:
                broken[row] = True
            else:
                chosen[row] = int(torch.multinomial(probs[k], 1, generator=generators[row]).item())
    return [NO_TOKEN if broken[row] else int(t) for row, t in enumerate(chosen)]


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability under the model, and the most likely tokens at its position."""

    token: int
    logprob: float | None
    """None for a prompt's first token, which nothing predicts."""
    top: tuple[tuple[int, float], ...] = ()
    """(token id, log-probability) of the most likely tokens, most likely first."""


def chosen_logprobs(logits: torch.Tensor, tokens: list[int], top: list[int]) -> list[TokenLogprob]:
    """The log-probability of `tokens[i]` under row i of `logits` (rows x vocab) and its `top[i]` most
    likely alternatives, computed in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    ids = torch.tensor(tokens, device=logits.device)
    chosen = logp.gather(-1, ids[:, None])[:, 0].tolist()
    k = max(top, default=0)
    values, indices = (logp.topk(k, dim=-1) if k else (logp[:, :0], logp[:, :0].long()))
    values_l, indices_l = values.tolist(), indices.tolist()
    return [TokenLogprob(t, c, tuple(zip(indices_l[r][:top[r]], values_l[r][:top[r]], strict=True)))
            for r, (t, c) in enumerate(zip(tokens, chosen, strict=True))]


def prompt_logprobs(logits: torch.Tensor, prompt_ids: list[int], offset: int, start: int,
                    top: int) -> list[TokenLogprob]:
    """The log-probabilities of the prompt tokens predicted by one chunk of a left-padded row's logits
    (positions `start`... x vocab; the prompt begins at column `offset`, and column c predicts the token
    at column c + 1)."""
    first, stop = max(start, offset), min(start + logits.shape[0], offset + len(prompt_ids) - 1)
    if first >= stop:
        return []
    targets = prompt_ids[first + 1 - offset:stop + 1 - offset]
    return chosen_logprobs(logits[first - start:stop - start], targets, [top] * len(targets))
