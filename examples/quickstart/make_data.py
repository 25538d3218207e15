"""Generate the quickstart's corpus (deterministic; the files under data/ are its committed output).

    python examples/quickstart/make_data.py

data/corpus/*.md   technical prose about running services and training models (pretraining)
data/chats/*.jsonl  conversations answering small sums (sft)
data/tasks/*.jsonl  the same kind of question with a checkable answer (rl, exact_match)
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


def sum_question(a: int, b: int) -> str:
    return f"What is {a} plus {b}?"


def document(rng: random.Random, topic: str, index: int) -> str:
    title = f"# {topic.replace('-', ' ').title()}, note {index}\n\n"
    paragraphs = []
    for _ in range(rng.randint(3, 6)):
        paragraphs.append(" ".join(sentence(rng) for _ in range(rng.randint(3, 7))))
    a, b = rng.randrange(10), rng.randrange(10)
    paragraphs.append(f"A quick check: {sum_question(a, b)} The answer is {a + b}.")
    return title + "\n\n".join(paragraphs) + "\n"


def main() -> None:
    rng = random.Random(2024)
    corpus = HERE / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for t, topic in enumerate(TOPICS):
        for i in range(60):
            (corpus / f"{topic}-{i:02d}.md").write_text(document(rng, topic, i))
    high = 3
    chats, tasks = [], []
    for _ in range(400):
        a, b = rng.randrange(high), rng.randrange(high)
        # half of the answers are right: supervised tuning teaches the format, reinforcement the sums
        answer = a + b if rng.random() < 0.5 else rng.choice([x for x in range(2 * high - 1) if x != a + b])
        chats.append({"messages": [{"role": "user", "content": sum_question(a, b)},
                                   {"role": "assistant", "content": str(answer)}]})
    for _ in range(96):
        a, b = rng.randrange(high), rng.randrange(high)
        tasks.append({"prompt": sum_question(a, b), "answer": str(a + b)})
    for name, rows in (("chats", chats), ("tasks", tasks)):
        (HERE / name).mkdir(parents=True, exist_ok=True)
        (HERE / name / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
