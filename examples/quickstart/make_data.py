"""Generate the quickstart's corpus (deterministic; the files under data/ are its committed output).

    python examples/quickstart/make_data.py

data/corpus/*.md     technical prose about running services and training models, with counts in order
                     ("3, 4, 5, 6"): pretraining sees the digits' order, never a comparison
data/chats/*.jsonl   "Which is larger, 3 or 8?" answered in the chat format, with either of the two numbers:
                     every training question equally often, answered with each of its numbers equally
                     often, so supervised tuning teaches the format (copy one of the two numbers), never
                     which number is right (sft)
data/tasks/*.jsonl   the same questions with their right answer for the exact_match verifier (rl)
data/heldout/*.jsonl the same questions about pairs of digits that no chat and no training task asks
                     about: the rl run's eval dataset, scored greedily before and after rl

The 45 pairs of distinct digits are split by a rule, not a random draw: a pair is held out (both orders)
when its numbers differ by 3 or by 5 (12 pairs, the README's example "Which is larger, 3 or 8?" among
them); the other 33 train. Why this rule: every adjacent pair (a, a+1) trains, so the only order of the
digits that fits every training task is the true one and a held-out pair is decided by it; every digit
but 0 and 9 both wins and loses in training (a random split held out every pair among 7, 8 and 9, so 7
and 8 never lost and "8 wins" fit the training tasks as well as "the larger wins"); and each digit is in
two or three held-out pairs, none left out of training.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent / "data"

SUBJECTS = ["The scheduler", "A training run", "The object store", "Each worker", "The data pipeline",
            "A checkpoint", "The operator", "The tokenizer", "A deployment", "The evaluation step",
            "The rendezvous server", "An elastic job", "The shard writer", "The inference server",
            "The validation split", "A node pool", "The queue", "The load balancer", "A replica",
            "The optimizer", "The learning rate schedule", "The gradient", "The cache", "A batch"]
VERBS = ["writes", "reads", "keeps", "checks", "records", "replaces", "splits", "restores", "measures",
         "reports", "compresses", "verifies", "schedules", "retries", "drains", "streams", "shards", "tracks"]
OBJECTS = ["the manifest", "every shard", "its progress", "the newest checkpoint", "the model weights",
           "the request queue", "a digest of each file", "the token counts", "the loss curve",
           "the rendezvous address", "the validation loss", "the last known step", "the tokenizer file",
           "the metrics endpoint", "the list of workers", "the audit log", "the retention policy"]
CLAUSES = ["before the next step begins", "when a node leaves the group", "so that a restart can resume",
           "after every hundred steps", "while the workers keep training", "once the data is ready",
           "without blocking the main loop", "so nothing is lost on failure", "in a single atomic write",
           "when the operator asks for it", "as soon as the job finishes", "for every namespace",
           "before it answers a request", "unless the spec says otherwise", "on a timer"]
OPENERS = ["In practice,", "On a small cluster,", "By default,", "During pretraining,", "After a failure,",
           "For reproducibility,", "On one machine,", "When the budget runs out,", "At the end of a run,",
           "To keep costs low,", "In the quickstart,", "With two workers,", ""]
TOPICS = ["scheduling", "checkpoints", "data-preparation", "tokenizers", "serving", "evaluation",
          "elastic-training", "object-storage", "observability", "fine-tuning"]


def sentence(rng: random.Random) -> str:
    opener = rng.choice(OPENERS)
    subject = rng.choice(SUBJECTS)
    if opener:
        subject = subject[0].lower() + subject[1:]
    parts = [opener, subject, rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(CLAUSES)]
    return " ".join(p for p in parts if p) + "."


HELDOUT_DIFFERENCES = (3, 5)
README_PAIR = (3, 8)
CHATS_PER_QUESTION = 6


def question(a: int, b: int) -> str:
    """The quickstart's question about two digits."""
    return f"Which is larger, {a} or {b}?"


def split_pairs() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(training pairs, held-out pairs), each an unordered pair of distinct digits (a < b)."""
    pairs = [(a, b) for a in range(10) for b in range(a + 1, 10)]
    heldout = [p for p in pairs if p[1] - p[0] in HELDOUT_DIFFERENCES]
    assert README_PAIR in heldout
    return [p for p in pairs if p not in heldout], heldout


def both_orders(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Each pair asked both ways round."""
    return [p for a, b in pairs for p in ((a, b), (b, a))]


def document(rng: random.Random, topic: str, index: int) -> str:
    title = f"# {topic.replace('-', ' ').title()}, note {index}\n\n"
    paragraphs = []
    for _ in range(rng.randint(3, 6)):
        paragraphs.append(" ".join(sentence(rng) for _ in range(rng.randint(3, 7))))
    start = rng.randrange(7)
    count = ", ".join(str(n) for n in range(start, min(10, start + rng.randint(3, 6))))
    paragraphs.append(f"{rng.choice(SUBJECTS)} counted up: {count}.")
    return title + "\n\n".join(paragraphs) + "\n"


def main() -> None:
    rng = random.Random(2024)
    corpus = HERE / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for topic in TOPICS:
        for i in range(60):
            (corpus / f"{topic}-{i:02d}.md").write_text(document(rng, topic, i))
    train, heldout = split_pairs()
    chats = []
    for a, b in both_orders(train):
        # each number equally often: the chats teach the answer's format, the verifier teaches which is right
        for answer in (a, b) * (CHATS_PER_QUESTION // 2):
            chats.append({"messages": [{"role": "user", "content": question(a, b)},
                                       {"role": "assistant", "content": str(answer)}]})
    rng.shuffle(chats)
    tasks = [{"prompt": question(a, b), "answer": str(max(a, b))} for a, b in both_orders(train)]
    held = [{"prompt": question(a, b), "answer": str(max(a, b))} for a, b in both_orders(heldout)]
    for name, rows in (("chats", chats), ("tasks", tasks), ("heldout", held)):
        (HERE / name).mkdir(parents=True, exist_ok=True)
        (HERE / name / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
