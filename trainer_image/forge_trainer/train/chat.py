"""The chat format of fine-tuned models: ChatML, tokenized with the base model's tokenizer.

    <|im_start|>system\n{content}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n
    <|im_start|>assistant\n{content}<|im_end|>\n

`<|im_start|>` and `<|im_end|>` are special tokens (ids 2 and 3 in tokenizers Forge trains; added to a
foreign tokenizer that lacks them). Training targets are the assistant turns' content and their
`<|im_end|>` (so the model learns to stop); everything else — system and user turns, role headers —
is context without loss. The same Jinja template goes into the export's tokenizer_config.json, so
`apply_chat_template` in transformers (and our server) renders prompts exactly as training saw them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import AddedToken, Tokenizer

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ROLES = ("system", "user", "assistant", "tool")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""The Jinja chat template stored in tokenizer_config.json (the format `render_ids` tokenizes)."""


class ChatFormatError(ValueError):
    """A record is not a usable conversation; the message says why (the record is skipped and counted)."""


@dataclass(frozen=True)
class TokenizedChat:
    """One conversation as token ids, with which ids are training targets."""

    ids: list[int]
    """Token ids of the whole conversation."""
    trained: list[bool]
    """True where the token is part of an assistant turn the model should learn to produce."""


def ensure_chat_tokens(tok: Tokenizer) -> list[str]:
    """Add `<|im_start|>`/`<|im_end|>` as special tokens when `tok` lacks them; return those added."""
    missing = [t for t in (IM_START, IM_END) if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    return missing


def messages_of(record: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation of an sft record: {"messages": [{"role", "content"}, ...]} or a
    {"prompt", "response"|"completion"} pair (with an optional "system")."""
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ChatFormatError("'messages' must be a non-empty list")
    elif "prompt" in record and ("response" in record or "completion" in record):
        messages = [{"role": "user", "content": record["prompt"]},
                    {"role": "assistant", "content": record.get("response", record.get("completion"))}]
        if isinstance(record.get("system"), str):
            messages.insert(0, {"role": "system", "content": record["system"]})
    else:
        raise ChatFormatError("record has neither 'messages' nor 'prompt' and 'response'")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ChatFormatError(f"message {i} needs a role in {ROLES} and a string content")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise ChatFormatError("conversation has no assistant turn to learn from")
    return out


class ChatTokenizer:
    """ChatML rendering of conversations into token ids with the base model's tokenizer."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        self.added = ensure_chat_tokens(tok)
        self.im_start = self._id(IM_START)
        self.im_end = self._id(IM_END)
        self.newline = self.encode("\n")

    def _id(self, token: str) -> int:
        idx = self.tok.token_to_id(token)
        if idx is None:
            raise ValueError(f"tokenizer has no {token} token")
        return int(idx)

    @property
    def vocab_size(self) -> int:
        """Vocabulary size including added special tokens."""
        return int(self.tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Ids of plain text (no special-token post-processing)."""
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids, special tokens dropped."""
        return str(self.tok.decode(list(ids), skip_special_tokens=True))

    def header(self, role: str) -> list[int]:
        """`<|im_start|>{role}\\n`."""
        return [self.im_start, *self.encode(role + "\n")]

    def render(self, messages: Sequence[dict[str, str]]) -> TokenizedChat:
        """A whole conversation; assistant contents and their `<|im_end|>` are the trained tokens."""
        ids: list[int] = []
        trained: list[bool] = []
        for m in messages:
            head = self.header(m["role"])
            body = [*self.encode(m["content"]), self.im_end]
            learn = m["role"] == "assistant"
            ids += head + body + self.newline
            trained += [False] * len(head) + [learn] * len(body) + [False] * len(self.newline)
        return TokenizedChat(ids, trained)

    def prompt_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """A conversation followed by the assistant header: what generation continues from."""
        ids: list[int] = []
        for m in messages:
            ids += self.header(m["role"]) + self.encode(m["content"]) + [self.im_end] + self.newline
        return ids + self.header("assistant")


def tokenizer_config_patch() -> dict[str, Any]:
    """Entries to add to an export's tokenizer_config.json so transformers renders chats as we train."""
    return {"chat_template": CHATML_TEMPLATE}
