"""Conversations in a base model's own chat format (Mistral's `[INST]`, Llama 3's headers, Qwen's ChatML):
the Jinja `chat_template` of its tokenizer_config.json, rendered in a sandbox as transformers renders it.

Trained tokens are each assistant turn's content and what closes it (its end-of-turn token), found by
rendering the conversation up to that turn with and without the generation prompt: the text the turn
adds beyond `add_generation_prompt=True` is what the model must produce. The whole conversation is then
tokenized once and a token is trained when its characters lie in such a span, so the ids are exactly
those `apply_chat_template(tokenize=True)` gives. A template that does not render a conversation as a
prefix of its continuation (e.g. one that rewrites earlier turns) cannot be split into turns this way:
such a record is a ChatFormatError, skipped and counted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NoReturn

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from forge_trainer.train.chat import ChatFormatError, ChatTokenizer, TokenizedChat

PROBE = "4"
"""An assistant answer used to find which token closes an assistant turn."""


def _raise(message: str) -> NoReturn:
    raise TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def template_of(tokenizer_config: dict[str, Any]) -> str | None:
    """The chat template of a tokenizer_config.json (a string, or the `default` of a named list)."""
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template.strip() else None


class TemplateChatTokenizer(ChatTokenizer):
    """ChatTokenizer's interface over a base model's own chat template; `im_end` is the token that closes
    an assistant turn (the stop token)."""

    def __init__(self, tok: Tokenizer, template: str, tokenizer_config: dict[str, Any]) -> None:
        self.tok = tok
        self.added: list[str] = []
        self.template_text = template
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self.template = env.from_string(template)
        except TemplateError as exc:
            raise ValueError(f"tokenizer_config.json chat_template does not compile: {exc}") from None
        self.specials = {k: _token_text(tokenizer_config.get(k)) for k in
                         ("bos_token", "eos_token", "pad_token", "unk_token")}
        self.newline = self.encode("\n")
        self.im_start = -1  # no turn-start token of its own; `header` is not used with a template
        self.im_end = self._stop_id()

    def text(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
        """The template's rendering of `messages`; a template that refuses system turns (Mistral's) gets the
        system content at the start of the first user turn instead. ChatFormatError when it still refuses."""
        try:
            return self._render(messages, add_generation_prompt)
        except TemplateError as exc:  # raise_exception(...) of the template, or a sandbox violation
            merged = _system_into_user(messages)
            if merged is not None:
                try:
                    return self._render(merged, add_generation_prompt)
                except TemplateError:
                    pass
            raise ChatFormatError(f"the base's chat template refused the conversation: {exc}") from None

    def _render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
        return str(self.template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                        **self.specials))

    def _stop_id(self) -> int:
        convo = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": PROBE}]
        try:
            prompt = self.text(convo[:1], add_generation_prompt=True)
            full = self.text(convo)
        except ChatFormatError as exc:
            raise ValueError(f"tokenizer_config.json chat_template: {exc}") from None
        tail = full[len(prompt):] if full.startswith(prompt) else ""
        end = tail[tail.find(PROBE) + len(PROBE):] if PROBE in tail else ""
        ids = self.encode(end.strip(" ")) if end.strip() else []
        if not ids:
            raise ValueError("tokenizer_config.json chat_template: an assistant turn is not closed by a token "
                             "(the model could not learn to stop)")
        return ids[0]

    def _trained_spans(self, messages: Sequence[dict[str, str]], full: str) -> list[tuple[int, int]]:
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = self.text(messages[:i], add_generation_prompt=True)
            upto = self.text(messages[:i + 1])
            if not (upto.startswith(prompt) and full.startswith(upto)):
                raise ChatFormatError("the base's chat template does not render this conversation turn by turn "
                                      "(an earlier part changes when a turn is added)")
            spans.append((len(prompt), len(upto)))
        return spans

    def render(self, messages: Sequence[dict[str, str]]) -> TokenizedChat:
        """A whole conversation; each assistant turn's content and closing tokens are trained."""
        full = self.text(messages)
        spans = self._trained_spans(messages, full)
        enc = self.tok.encode(full, add_special_tokens=False)
        trained = [any(a <= start and end <= b and start < end for a, b in spans) for start, end in enc.offsets]
        return TokenizedChat(list(enc.ids), trained)

    def prompt_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """A conversation with the template's generation prompt: what generation continues from."""
        return self.encode(self.text(messages, add_generation_prompt=True))

    def header(self, role: str) -> list[int]:
        """Not defined for a base's template (turns are rendered whole)."""
        raise NotImplementedError("a base's chat template renders whole conversations")


def _system_into_user(messages: Sequence[dict[str, str]]) -> list[dict[str, str]] | None:
    """The conversation with its leading system turn folded into the first user turn; None without one."""
    if not messages or messages[0].get("role") != "system":
        return None
    rest = [dict(m) for m in messages[1:]]
    for m in rest:
        if m.get("role") == "user":
            m["content"] = f"{messages[0].get('content', '')}\n\n{m.get('content', '')}"
            return rest
    return None


def _token_text(value: Any) -> str | None:
    """A special token of tokenizer_config.json: a string or an AddedToken-like {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None
