"""Record shapes for sft (conversations) and rl (tasks): validation and conversion to the one shape
the trainer reads.

sft: `{"messages": [{"role": "system|user|assistant", "content": str}, ...]}`; also accepted and
converted: `{"prompt", "response"}` (optionally `"system"`) and ShareGPT `{"conversations": [{"from",
"value"}]}`.
rl: `{"prompt": str, ...}` plus what counts as success: `answer` (exact_match), `pattern` (regex),
`schema` (json_schema), `tool`/`arguments` (tool_call), `tests` (python_tests); unknown keys are kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from forge_trainer.config import DatasetPurpose

INVALID_RECORD = "invalid_record"
ROLES = ("system", "user", "assistant")
_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                   "assistant": "assistant", "model": "assistant"}


class RecordError(ValueError):
    """A record does not have the shape its purpose needs; the message says what is wrong."""


def to_conversation(obj: dict[str, Any]) -> dict[str, Any]:
    """An sft record as `{"messages": [...]}`; RecordError when it is not a usable conversation."""
    if "messages" in obj:
        raw = obj["messages"]
        if not isinstance(raw, list):
            raise RecordError("messages is not a list")
        messages = []
        for m in raw:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise RecordError("each message needs a role (system, user, assistant) and a string content")
            messages.append({"role": m["role"], "content": m["content"]})
    elif "conversations" in obj and isinstance(obj["conversations"], list):
        messages = []
        for m in obj["conversations"]:
            role = _SHAREGPT_ROLES.get(str(m.get("from"))) if isinstance(m, dict) else None
            if role is None or not isinstance(m.get("value"), str):
                raise RecordError("each conversation turn needs from (human, gpt, system) and a string value")
            messages.append({"role": role, "content": m["value"]})
    elif isinstance(obj.get("prompt"), str) and isinstance(obj.get("response", obj.get("completion")), str):
        messages = []
        if isinstance(obj.get("system"), str) and obj["system"]:
            messages.append({"role": "system", "content": obj["system"]})
        messages.append({"role": "user", "content": obj["prompt"]})
        messages.append({"role": "assistant", "content": obj.get("response", obj.get("completion"))})
    else:
        raise RecordError("needs messages, conversations, or prompt and response")
    roles = {m["role"] for m in messages}
    if "user" not in roles or "assistant" not in roles:
        raise RecordError("a conversation needs at least one user and one assistant message")
    if not any(m["content"].strip() for m in messages if m["role"] == "assistant"):
        raise RecordError("every assistant message is empty")
    return {"messages": messages}


def to_task(obj: dict[str, Any]) -> dict[str, Any]:
    """An rl task with a non-empty string prompt; other keys are kept as they are."""
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RecordError("an rl task needs a non-empty string prompt")
    pattern = obj.get("pattern")
    if pattern is not None:
        try:
            re.compile(str(pattern))
        except re.error as exc:
            raise RecordError(f"pattern is not a valid regular expression: {exc}") from exc
    return dict(obj)


def map_texts(record: dict[str, Any], purpose: DatasetPurpose, fn: Callable[[str], str]) -> dict[str, Any]:
    """`record` with `fn` applied to its free text: every message content (sft) or the prompt (rl;
    answers, patterns and tests are left alone, as verifiers compare against them exactly)."""
    if purpose is DatasetPurpose.SFT:
        return {"messages": [{"role": m["role"], "content": fn(m["content"])} for m in record["messages"]]}
    return {**record, "prompt": fn(record["prompt"])}


def record_text(record: dict[str, Any], purpose: DatasetPurpose) -> str:
    """The text of a record that dedup, filters and tokenizer training see."""
    if purpose is DatasetPurpose.SFT:
        return "\n".join(m["content"] for m in record["messages"])
    parts = [record["prompt"]]
    if isinstance(record.get("answer"), str):
        parts.append(record["answer"])
    return "\n".join(parts)


def validate_record(obj: dict[str, Any], purpose: DatasetPurpose) -> dict[str, Any]:
    """The record in its canonical shape for `purpose`; RecordError when it cannot be."""
    if purpose is DatasetPurpose.SFT:
        return to_conversation(obj)
    if purpose is DatasetPurpose.RL:
        return to_task(obj)
    raise RecordError(f"purpose {purpose.value} has no record shape")
