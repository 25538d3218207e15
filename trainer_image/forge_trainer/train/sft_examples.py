"""Supervised fine-tuning data and loss, shared by the sft stage and evaluation: the conversations of
an sft dataset rendered as ChatML and tokenized (`read_sft_examples`), the endless seeded stream of
packed rows over them (`PackedStream`; epoch e visits the samples in a seeded order, so the stream —
and a resumed run — is a pure function of the seed), and the loss on assistant tokens."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from forge_trainer.config import TrainConfig
from forge_trainer.data.manifest import Manifest, ShardFormat, Split
from forge_trainer.data.shards import iter_records
from forge_trainer.train.batches import Batch
from forge_trainer.train.chat import ChatFormatError, ChatTokenizer, messages_of
from forge_trainer.train.parallel import unwrap
from forge_trainer.train.runtime import Runtime, all_reduce_sum
from forge_trainer.train.sample_packing import Example, make_example, pack, packed_logits, rows_batch
from forge_trainer.train.step_engine import cross_entropy_sum, mean_with_balance_loss


def read_sft_examples(uri: str, manifest: Manifest, split: Split, chat: ChatTokenizer, max_len: int,
                      config: TrainConfig) -> tuple[list[Example], Counter[str]]:
    """Tokenized examples of one split of an sft dataset, and records skipped by reason."""
    examples: list[Example] = []
    skipped: Counter[str] = Counter()
    for shard in manifest.shards:
        if shard.split is not split or shard.format is not ShardFormat.JSONL:
            continue
        for record in iter_records(uri, shard, config.store):
            try:
                rendered = chat.render(messages_of(record))
            except ChatFormatError:
                skipped["not_a_conversation"] += 1
                continue
            example = make_example(rendered.ids, rendered.trained, max_len)
            if example is None:
                skipped["nothing_to_learn_after_truncation"] += 1
                continue
            examples.append(example)
    return examples, skipped


@dataclass
class PackedStream:
    """The endless seeded stream of packed rows of a set of examples."""

    examples: Sequence[Example]
    seq_len: int
    seed: int
    one_per_row: bool = False
    _epoch: int = -1
    _rows: list[list[int]] = field(default_factory=list)
    _offsets: list[int] = field(default_factory=list)

    def _rows_of(self, epoch: int) -> list[list[int]]:
        if epoch != self._epoch:
            order = list(range(len(self.examples)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            if self.one_per_row:
                self._rows = [[i] for i in order]
            else:
                packed = pack([self.examples[i] for i in order], self.seq_len)
                self._rows = [[order[i] for i in row] for row in packed]
            self._epoch = epoch
        return self._rows

    def rows_per_epoch(self) -> int:
        """Rows in one epoch (epoch 0's packing; later epochs differ by a few at most)."""
        return len(self._rows_of(0))

    def rows(self, start: int, count: int) -> list[list[int]]:
        """Rows `start .. start + count` of the stream (epochs are consecutive)."""
        out: list[list[int]] = []
        if count <= 0 or not self.examples:
            return out
        epoch, index = 0, start
        while True:
            n = len(self._rows_of(epoch))
            if index < n:
                break
            index -= n
            epoch += 1
        while len(out) < count:
            rows = self._rows_of(epoch)
            take = rows[index:index + count - len(out)]
            out.extend(take)
            index = 0
            epoch += 1
        return out

    def batch(self, rows: Sequence[Sequence[int]]) -> Batch:
        """A micro-batch of these rows."""
        return rows_batch(self.examples, rows, self.seq_len, 0, self.one_per_row)


def sft_logits(model: nn.Module, batch: Batch) -> Tensor:
    """Logits of a packed micro-batch (block-diagonal attention) or a padded one (model forward)."""
    if "seq_ids" in batch:
        return packed_logits(unwrap(model), batch["input_ids"], batch["position_ids"], batch["seq_ids"])
    logits: Tensor = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    return logits


def sft_loss_sum(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """(summed cross-entropy over trained tokens, number of trained tokens) of a micro-batch."""
    return cross_entropy_sum(sft_logits(model, batch), batch["labels"])


def sft_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Mean cross-entropy over the assistant tokens of a micro-batch (+ the MoE balance loss)."""
    return mean_with_balance_loss(model, *sft_loss_sum(model, batch))


@torch.no_grad()
def sft_eval_loss(model: nn.Module, stream: PackedStream, max_rows: int, micro: int, runtime: Runtime) -> float | None:
    """Token-weighted mean loss on the first `max_rows` rows of a (validation) stream, over all workers."""
    model.eval()
    n = min(max_rows, stream.rows_per_epoch())
    mine = list(range(runtime.rank, n, runtime.world_size))
    sums = torch.zeros(2, dtype=torch.float64, device=runtime.device)
    rows = stream.rows(0, n)
    for i in range(0, len(mine), micro):
        batch = {k: v.to(runtime.device) for k, v in stream.batch([rows[j] for j in mine[i:i + micro]]).items()}
        total, count = sft_loss_sum(model, batch)
        sums += torch.stack([total.double(), count.double()])
    total, count = all_reduce_sum(runtime, sums).tolist()
    model.train()
    return total / count if count else None
