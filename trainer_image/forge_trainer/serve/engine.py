"""The generation engine: continuous batching over one model, with a KV cache per running sequence.

One background thread owns the model. Before every decoding step it admits the requests that
arrived since the last step (up to `max_batch_size` running sequences): their prompts are prefilled
in arrival order, in groups of at most `max_prefill_tokens` tokens per forward pass, each group's first
tokens are chosen and sent at once, and its caches join the running batch; requests arriving during a
prefill are admitted too before decoding goes on. Then one forward pass advances
every running sequence by one token. A finished sequence leaves the batch at
the step it finishes, so a short request never waits for a long one.

The batch's KV cache is one `DynamicCache` whose rows are left-padded to a common length; an
attention mask hides the padding and each row gets its own position ids, which is how Hugging Face
`generate` runs a left-padded batch. Rows are only re-padded when sequences join or leave. Its layers
keep room for more tokens (see `_RoomyLayer`): a decoding step writes one column of keys and values
where `DynamicCache` would copy the whole cache.

Results go back to the asyncio side in one `call_soon_threadsafe` per step and event loop, and a
listener that falls behind gets everything produced meanwhile at once.

Scoring (the API's `echo` with `logprobs`) is part of the prefill, so a scoring request waits in the
same queue, counts against the same batch places and prefill budget as any other. A prefill group
holding a sequence that wants its prompt's log-probabilities needs the logits of every position, not
only the last: it is prefilled in chunks of positions through its KV cache (as decoding extends it),
each chunk small enough that its logits (rows x positions x vocabulary) stay within
`scoring_logits`, so scoring a prompt of the whole context costs bounded memory whatever the
vocabulary. A sequence with `max_tokens` 0 finishes at its prefill, having generated nothing.

A failure that belongs to one sequence (its probabilities are not finite, its text cannot be decoded)
finishes that sequence with `error` and leaves the others generating; only a failed forward pass
fails every sequence it was running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer

from forge_trainer.serve.sampling import (
    NO_TOKEN,
    SamplingParams,
    TokenLogprob,
    bias_tensors,
    choose_tokens,
    chosen_logprobs,
    make_generator,
    prompt_logprobs,
)
from forge_trainer.serve.text_stream import Decoder, TextStream

log = logging.getLogger(__name__)

SCORING_LOGITS = 2**26
"""Most logits one prefill forward pass of a scoring group keeps (256 MiB in float32)."""
_BURST_WINDOW_S = 0.002
"""How long an idle engine waits after the first request for others arriving with it."""


@dataclass(frozen=True)
class Delta:
    """What one request gets after a step: new text, and at the end why it finished and token counts."""

    text: str
    finish_reason: str | None = None
    """None while generating; `stop` (end of sequence or a stop string), `length` or `error`."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    """When the request asked for logprobs: the prompt's tokens (first Delta, with echo), then each
    generated token's, end of sequence included."""


@dataclass(frozen=True, eq=False)
class _Listener:
    """Where a sequence's Deltas go: an asyncio queue of (choice index, Delta) on an event loop."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[tuple[int, Delta]]
    index: int


def _put_all(items: list[tuple[_Listener, Delta]]) -> None:
    for listener, delta in items:
        listener.queue.put_nowait((listener.index, delta))


@dataclass(eq=False)
class _Sequence:
    """One request inside the engine."""

    prompt_ids: list[int]
    params: SamplingParams
    text: TextStream
    listener: _Listener
    generator: torch.Generator | None = None
    bias: tuple[torch.Tensor, torch.Tensor] | None = None
    """params.logit_bias as tensors, made when the sequence is prefilled."""
    generated: int = 0
    last_token: int = -1
    cancelled: bool = False
    finish_reason: str | None = None
    released: bool = False
    """Whether the engine has let go of it (no longer counted in Engine.held)."""

    @property
    def length(self) -> int:
        """Tokens of this sequence held in the KV cache, which is also the position of the next input."""
        return len(self.prompt_ids) + self.generated - 1


class _Handle:
    """Lets the asyncio side cancel a request it no longer listens to."""

    def __init__(self, seq: _Sequence) -> None:
        self._seq = seq

    def cancel(self) -> None:
        self._seq.cancelled = True


class Generation:
    """The sequences of one API call inside the engine: their Deltas as they come, and a way to cancel them."""

    def __init__(self, handles: list[_Handle], deltas: asyncio.Queue[tuple[int, Delta]]) -> None:
        self._handles = handles
        self._deltas = deltas

    async def batches(self) -> AsyncIterator[list[tuple[int, Delta]]]:
        """(request index, Delta) pairs in the order they are produced, all that arrived since the last batch
        at once, until every request has finished; stopping early cancels the rest."""
        unfinished = len(self._handles)
        try:
            while unfinished:
                batch = [await self._deltas.get()]
                while not self._deltas.empty():
                    batch.append(self._deltas.get_nowait())
                unfinished -= sum(1 for _, d in batch if d.finish_reason is not None)
                yield batch
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Stop generating for every request still running (no effect on finished ones)."""
        for handle in self._handles:
            handle.cancel()


class Engine:
    """Serves generation requests for one model from a background thread (see the module docstring)."""

    def __init__(self, model: PreTrainedModel, tokenizer: Decoder, *, eos_token_ids: set[int],
                 max_batch_size: int = 8, context_length: int, pad_token_id: int = 0,
                 max_prefill_tokens: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = set(eos_token_ids)
        self.max_batch_size = max_batch_size
        self.context_length = context_length
        self.pad_token_id = pad_token_id
        self.device = next(model.parameters()).device
        self._num_layers = int(model.config.get_text_config(decoder=True).num_hidden_layers)
        self._vocab_size = int(model.config.get_text_config(decoder=True).vocab_size)
        self.scoring_logits = SCORING_LOGITS
        """Most logits (rows x positions x vocabulary) one forward pass keeps when a group scores prompts."""
        self.max_prefill_tokens = max_prefill_tokens or default_prefill_tokens(self.device)
        """Most prompt tokens (padding included) prefilled in one forward pass; a longer prompt goes alone."""
        self._incoming: queue.SimpleQueue[_Sequence | None] = queue.SimpleQueue()
        self._waiting: list[_Sequence] = []
        self._running: list[_Sequence] = []
        self._admitting: list[_Sequence] = []  # taken from _waiting, being prefilled
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # batch x cached columns, 1 where a real token is
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = 0
        """Decoding steps run so far (a step advances every running sequence by one token)."""
        self._held = 0
        self._held_lock = threading.Lock()  # both threads change _held

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the generation thread."""
        self._thread = threading.Thread(target=self._loop, name="forge-generation", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the generation thread; running requests end with finish reason `error`."""
        self._stopping = True
        self._incoming.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def running(self) -> int:
        """Sequences in the running batch (or being prefilled to join it)."""
        return len(self._running) + len(self._admitting)

    @property
    def waiting(self) -> int:
        """Requests admitted to the engine but not yet in the batch."""
        return len(self._waiting) + self._incoming.qsize()

    @property
    def held(self) -> int:
        """Sequences submitted and not yet let go of (running or waiting), counted exactly: unlike
        running + waiting, no sequence is missed while the engine thread moves it between lists."""
        return self._held

    def _release(self, seqs: list[_Sequence]) -> None:
        """Stop counting `seqs` as held (once each)."""
        with self._held_lock:
            for seq in seqs:
                if not seq.released:
                    seq.released = True
                    self._held -= 1

    # -- the asyncio side -----------------------------------------------------------------------

    def _submit(self, prompt_ids: list[int], params: SamplingParams, listener: _Listener) -> _Handle:
        seq = _Sequence(prompt_ids=list(prompt_ids), params=params,
                        text=TextStream(self.tokenizer, params.stop), listener=listener,
                        generator=make_generator(params, self.device))
        with self._held_lock:
            self._held += 1
        self._incoming.put(seq)
        return _Handle(seq)

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        """The Deltas of one request as they are produced, one per generated token; the last one has a
        finish_reason."""
        async for batch in self.generate_many([(prompt_ids, params)]):
            for _, delta in batch:
                yield delta

    def submit_many(self, requests: list[tuple[list[int], SamplingParams]]) -> Generation:
        """Hand several requests (the choices of one API call) to the engine at once; call on the event loop
        that will read their Deltas. They count as waiting from now on."""
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[tuple[int, Delta]] = asyncio.Queue()
        handles = [self._submit(ids, params, _Listener(loop, deltas, i)) for i, (ids, params) in enumerate(requests)]
        return Generation(handles, deltas)

    async def generate_many(self, requests: list[tuple[list[int], SamplingParams]]
                            ) -> AsyncIterator[list[tuple[int, Delta]]]:
        """The Deltas of several requests (the choices of one API call) as (request index, Delta), in the
        order they are produced; each batch holds all that arrived since the last one. Closing the
        iterator early cancels the requests still running."""
        generation = self.submit_many(requests)
        try:
            async for batch in generation.batches():
                yield batch
        finally:
            generation.cancel()

    # -- the generation thread -------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._stopping:
                try:
                    self._step()
                except Exception as exc:  # a failed step fails its requests, not the server
                    log.exception("generation step failed")
                    failed = [s for s in self._running + self._admitting + self._waiting if s.finish_reason is None]
                    self._publish_all([(s, self._finish(s, "error", error=f"generation failed: {exc}"))
                                       for s in failed])
                    self._release(self._running + self._admitting + self._waiting)
                    self._running, self._admitting, self._waiting = [], [], []
                    self._cache, self._mask = None, None
        self._publish_all([(s, self._finish(s, "error", error="server shutting down"))
                           for s in self._running + self._waiting])

    def _take_incoming(self, block: bool = True) -> None:
        """Move newly submitted requests to the waiting list; block for one if there is nothing to do."""
        block = block and not self._running and not self._waiting
        while True:
            try:
                seq = self._incoming.get(block=block)
            except queue.Empty:
                return
            if seq is None:
                return
            if block:
                # woken from idle: let the rest of a burst of requests land, so it is prefilled as one batch
                time.sleep(_BURST_WINDOW_S)
                block = False
            self._waiting.append(seq)

    def _step(self) -> None:
        self._take_incoming()
        # Prefill first: requests that arrive while a prompt is being prefilled are admitted before the
        # next decoding step, so a burst of requests gets its first tokens together. The batch's free
        # places bound how long decoding can be put off.
        while not self._stopping:
            self._release([s for s in self._waiting if s.cancelled])
            self._waiting = [s for s in self._waiting if not s.cancelled]
            free = self.max_batch_size - len(self._running)
            if free <= 0 or not self._waiting:
                break
            take = self._prefill_group_size(free)
            self._admitting, self._waiting = self._waiting[:take], self._waiting[take:]
            self._prefill(self._admitting)
            self._take_incoming(block=False)
        if self._running and not self._stopping:
            self._decode()

    def _prefill_group_size(self, free: int) -> int:
        """How many of the waiting sequences (in arrival order) to prefill together: as many as fit in the
        batch's free places and in `max_prefill_tokens` once left-padded to the longest, at least one."""
        width = 0
        for n, seq in enumerate(self._waiting[:free]):
            width = max(width, len(seq.prompt_ids))
            if n and (n + 1) * width > self.max_prefill_tokens:
                return n
        return min(free, len(self._waiting))

    def _prefill(self, seqs: list[_Sequence]) -> None:
        """Run the prompts of newly admitted sequences, choose their first tokens, join the batch."""
        width = max(len(s.prompt_ids) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, width - len(s.prompt_ids):] = torch.tensor(s.prompt_ids)
            mask[row, width - len(s.prompt_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        ids, mask, positions = ids.to(self.device), mask.to(self.device), positions.to(self.device)
        cache = _BatchCache([_RoomyLayer(self.context_length) for _ in range(self._num_layers)])
        scoring = [s.params.echo and s.params.logprobs is not None for s in seqs]
        chunk = max(1, self.scoring_logits // (len(seqs) * self._vocab_size)) if any(scoring) else width
        scored: list[list[TokenLogprob]] = [[TokenLogprob(s.prompt_ids[0], None)] if scoring[row] else []
                                            for row, s in enumerate(seqs)]
        for start in range(0, width, chunk):
            end = min(width, start + chunk)
            out = self.model(input_ids=ids[:, start:end], attention_mask=mask[:, :end],
                             position_ids=positions[:, start:end], past_key_values=cache, use_cache=True,
                             logits_to_keep=0 if any(scoring) else 1)
            if width > min(len(s.prompt_ids) for s in seqs):
                _zero_padding(cache, mask[:, :end])
            for row, s in enumerate(seqs):
                if scoring[row]:
                    scored[row].extend(prompt_logprobs(out.logits[row], s.prompt_ids, width - len(s.prompt_ids),
                                                       start, s.params.logprobs or 0))
            last = out.logits[:, -1, :]
            del out  # every position's logits when scoring: let them go before the next chunk
        prompts = [tuple(lps) for lps in scored]
        for s in seqs:
            s.bias = bias_tensors(s.params, self.device)
        tokens, chosen = self._choose(last, seqs)
        deltas = self._advance_all(seqs, tokens, chosen, prompts)
        # first tokens go out before the group's cache is copied into the batch's
        self._publish_all([(s, d) for s, d in zip(seqs, deltas, strict=True) if d is not None])
        self._merge(cache, mask)
        self._running.extend(seqs)
        self._admitting = []
        if any(s.finish_reason is not None for s in seqs):
            self._drop_finished()

    def _decode(self) -> None:
        """Advance every running sequence by one token."""
        assert self._cache is not None and self._mask is not None
        seqs = self._running
        ids = torch.tensor([[s.last_token] for s in seqs], device=self.device)
        positions = torch.tensor([[s.length] for s in seqs], device=self.device)
        self._mask = F.pad(self._mask, (0, 1), value=1)
        out = self.model(input_ids=ids, attention_mask=self._mask, position_ids=positions,
                         past_key_values=self._cache, use_cache=True)
        tokens, chosen = self._choose(out.logits[:, -1, :], seqs)
        deltas = self._advance_all(seqs, tokens, chosen)
        self.steps += 1
        self._publish(seqs, deltas)

    @staticmethod
    def _choose(logits: torch.Tensor, seqs: list[_Sequence]) -> tuple[list[int], list[TokenLogprob | None]]:
        """Each sequence's next token, and its log-probability where the sequence asked for them."""
        tokens = choose_tokens(logits, [s.params for s in seqs], [s.generator for s in seqs], [s.bias for s in seqs])
        chosen: list[TokenLogprob | None] = [None] * len(seqs)
        rows = [r for r, s in enumerate(seqs)
                if s.params.logprobs is not None and s.params.max_tokens > 0 and tokens[r] != NO_TOKEN]
        if rows:
            scored = chosen_logprobs(logits[rows], [tokens[r] for r in rows],
                                     [seqs[r].params.logprobs or 0 for r in rows])
            for r, lp in zip(rows, scored, strict=True):
                chosen[r] = lp
        return tokens, chosen

    def _advance_all(self, seqs: list[_Sequence], tokens: list[int], chosen: list[TokenLogprob | None],
                     prompts: list[tuple[TokenLogprob, ...]] | None = None) -> list[Delta | None]:
        """`_advance` every sequence, its Delta carrying the log-probabilities it asked for (the prompt's
        first, at its prefill); a sequence whose own step fails finishes with `error`, alone."""
        deltas: list[Delta | None] = []
        for row, (seq, token) in enumerate(zip(seqs, tokens, strict=True)):
            try:
                delta = self._advance(seq, token)
            except Exception as exc:  # e.g. its tokens do not decode: that sequence's failure, not the batch's
                log.exception("sequence failed")
                delta = self._finish(seq, "error", error=f"generation failed: {exc}")
            token_lp = chosen[row]
            scored = (prompts[row] if prompts else ()) + ((token_lp,) if token_lp is not None else ())
            deltas.append(replace(delta, logprobs=scored) if delta is not None and scored else delta)
        return deltas

    def _advance(self, seq: _Sequence, token: int) -> Delta | None:
        """Record the token chosen for `seq`; returns what to tell its listener."""
        if seq.cancelled:
            seq.finish_reason = "cancelled"
            return None
        if seq.params.max_tokens == 0:  # scoring the prompt only (echo): nothing to generate
            return self._finish(seq, "length")
        if token == NO_TOKEN:
            return self._finish(seq, "error", error="generation failed: the next-token probabilities are not "
                                f"finite (temperature {seq.params.temperature}, top_p {seq.params.top_p})")
        seq.generated += 1
        seq.last_token = token
        if token in self.eos_token_ids:
            return self._finish(seq, "stop")
        piece = seq.text.push(token)
        if seq.text.stopped:
            return self._finish(seq, "stop", piece)
        if seq.generated >= seq.params.max_tokens or seq.length + 1 >= self.context_length:
            return self._finish(seq, "length", piece)
        return Delta(text=piece)

    def _finish(self, seq: _Sequence, reason: str, piece: str = "", *, error: str | None = None) -> Delta:
        seq.finish_reason = reason
        if reason in ("stop", "length"):
            piece += seq.text.finish()
        delta = Delta(text=piece, finish_reason=reason, prompt_tokens=len(seq.prompt_ids),
                      completion_tokens=seq.generated, error=error)
        return delta

    def _publish(self, seqs: list[_Sequence], deltas: list[Delta | None]) -> None:
        self._publish_all([(s, d) for s, d in zip(seqs, deltas, strict=True) if d is not None])
        if any(s.finish_reason is not None for s in self._running):
            self._drop_finished()

    @staticmethod
    def _publish_all(items: list[tuple[_Sequence, Delta]]) -> None:
        """Hand Deltas to their listeners: one wake-up per event loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Listener, Delta]]] = {}
        for seq, delta in items:
            by_loop.setdefault(seq.listener.loop, []).append((seq.listener, delta))
        for loop, batch in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody listens any more
                loop.call_soon_threadsafe(_put_all, batch)

    # -- the batch's KV cache ---------------------------------------------------------------------

    def _merge(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Append the rows of `cache` to the running batch, left-padding whichever is shorter."""
        if self._cache is None or self._mask is None:
            self._cache, self._mask = cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])
        self._cache = _BatchCache([_RoomyLayer.stacked([old, new], width, self.context_length)
                                   for old, new in zip(_layers(self._cache), _layers(cache), strict=True)])
        self._mask = torch.cat([_left_pad(self._mask, width), _left_pad(mask, width)])

    def _drop_finished(self) -> None:
        keep = [i for i, s in enumerate(self._running) if s.finish_reason is None]
        self._release([s for s in self._running if s.finish_reason is not None])
        self._running = [self._running[i] for i in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        assert self._cache is not None and self._mask is not None
        rows = torch.tensor(keep, device=self.device)
        mask = self._mask.index_select(0, rows)
        first = int(mask.any(dim=0).nonzero()[0])  # columns before it are padding in every kept row
        self._mask = mask[:, first:]
        self._cache = _BatchCache([
            _RoomyLayer.stacked([(k.index_select(0, rows)[..., first:, :], v.index_select(0, rows)[..., first:, :])],
                                mask.shape[1] - first, self.context_length)
            for k, v in _layers(self._cache)])


def default_prefill_tokens(device: torch.device) -> int:
    """Prompt tokens per prefill forward pass when not configured. On a CPU a forward pass is bound by
    arithmetic from a few dozen tokens on, so a small group finishes sooner and costs no more per token
    than a big one: the first requests of a burst get their first tokens early instead of all waiting
    for the longest prefill (measured on 2 cores, 8 prompts of 30 tokens: groups of 4 take 110 ms in
    all, one group of 8 takes 135 ms). An accelerator runs a big group for little more than a small one."""
    return 128 if device.type == "cpu" else 8192


class _RoomyLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A full-attention KV cache layer with room to grow: its keys and values are views of longer buffers,
    so appending a decoded token writes one column where `DynamicLayer` concatenates, copying every
    cached token of every row (measured on 2 CPU cores, 8 rows of 400 tokens: 7% less CPU per token).
    Buffers grow by half their length (at least 64 tokens) when full, up to `limit` tokens, the
    context length, which no row of the batch outgrows."""

    def __init__(self, limit: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.limit = limit
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def _room(self, length: int) -> int:
        return max(length, min(self.limit, max(length + 64, length * 3 // 2)))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object,
               **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        start = 0 if self.keys is None else self.keys.shape[-2]
        end = start + key_states.shape[-2]
        if self._key_buffer is None or self._value_buffer is None or end > self._key_buffer.shape[-2]:
            self._allocate(key_states, value_states, self._room(end))
        assert self._key_buffer is not None and self._value_buffer is not None
        self._key_buffer[..., start:end, :].copy_(key_states)
        self._value_buffer[..., start:end, :].copy_(value_states)
        self.keys, self.values = self._key_buffer[..., :end, :], self._value_buffer[..., :end, :]
        return self.keys, self.values

    def _allocate(self, key_like: torch.Tensor, value_like: torch.Tensor, room: int) -> None:
        """New buffers of `room` tokens holding the cached keys and values."""
        self.dtype, self.device, self.is_initialized = key_like.dtype, key_like.device, True
        keys = key_like.new_empty((*key_like.shape[:2], room, key_like.shape[-1]))
        values = value_like.new_empty((*value_like.shape[:2], room, value_like.shape[-1]))
        if self.keys is not None and self.values is not None:
            keys[..., :self.keys.shape[-2], :].copy_(self.keys)
            values[..., :self.values.shape[-2], :].copy_(self.values)
        self._key_buffer, self._value_buffer = keys, values

    @classmethod
    def stacked(cls, parts: list[tuple[torch.Tensor, torch.Tensor]], width: int, limit: int) -> _RoomyLayer:
        """A layer holding the rows of `parts` ((keys, values) pairs) one after the other, each left-padded
        with zeros to `width` tokens."""
        layer = cls(limit)
        k0, v0 = parts[0]
        rows = sum(k.shape[0] for k, _ in parts)
        room = layer._room(width)
        keys = k0.new_zeros((rows, k0.shape[1], room, k0.shape[-1]))
        values = v0.new_zeros((rows, v0.shape[1], room, v0.shape[-1]))
        row = 0
        for k, v in parts:
            keys[row:row + k.shape[0], :, width - k.shape[2]:width].copy_(k)
            values[row:row + v.shape[0], :, width - v.shape[2]:width].copy_(v)
            row += k.shape[0]
        layer.dtype, layer.device, layer.is_initialized = k0.dtype, k0.device, True
        layer._key_buffer, layer._value_buffer = keys, values
        layer.keys, layer.values = keys[..., :width, :], values[..., :width, :]
        return layer


class _BatchCache(DynamicCache):
    """The running batch's cache: a DynamicCache of `_RoomyLayer`s."""

    def __init__(self, layers: list[_RoomyLayer]) -> None:
        Cache.__init__(self, layers=[*layers])  # DynamicCache's own __init__ would make DynamicLayers


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (keys, values) of every layer of a filled cache."""
    out = []
    for layer in cache.layers:
        if not isinstance(layer, DynamicLayer) or layer.keys is None or layer.values is None:
            raise TypeError(f"the batching engine needs a full-attention KV cache, got {type(layer).__name__}")
        out.append((layer.keys, layer.values))
    return out


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """`t` (a mask: batch x seq, or keys/values: batch x heads x seq x dim) left-padded with zeros."""
    if t.dim() == 2:
        return F.pad(t, (width - t.shape[1], 0))
    return F.pad(t, (0, 0, width - t.shape[2], 0))


def _zero_padding(cache: DynamicCache, mask: torch.Tensor) -> None:
    """Zero the keys and values at padding positions: they are masked, but a NaN there would still
    poison the attention sum (0 * NaN)."""
    padding = ~mask.bool()[:, None, :, None]
    for k, v in _layers(cache):
        k.masked_fill_(padding, 0.0)
        v.masked_fill_(padding, 0.0)

