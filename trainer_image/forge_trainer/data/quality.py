"""Heuristic quality filters: length, letter and symbol ratios, repeated lines."""

from __future__ import annotations

import re

from forge_trainer.config import QualityConfig

TOO_SHORT = "too_short"
TOO_LONG = "too_long"
LOW_ALPHA = "low_alpha_ratio"
HIGH_SYMBOL = "high_symbol_ratio"
REPETITIVE = "repetitive"

_SPACE = re.compile(r"\s")
_LETTER = re.compile(r"[^\W\d_]")
_SYMBOL = re.compile(r"[^\w\s]|_")
_ASCII_LETTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ASCII_SPACE = b" \t\n\r\x0b\x0c"
_ASCII_ALNUM_SPACE = _ASCII_LETTERS + b"0123456789" + _ASCII_SPACE


def _ratios(text: str) -> tuple[int, int, int]:
    """(non-space characters, letters, symbols) of `text`."""
    if text.isascii():
        raw = text.encode()
        non_space = len(raw.translate(None, _ASCII_SPACE))
        letters = len(raw) - len(raw.translate(None, _ASCII_LETTERS))
        symbols = len(raw.translate(None, _ASCII_ALNUM_SPACE))
        return non_space, letters, symbols
    spaces = len(_SPACE.findall(text))
    return len(text) - spaces, len(_LETTER.findall(text)), len(_SYMBOL.findall(text))


def duplicate_line_fraction(text: str) -> float:
    """Fraction of non-blank lines that repeat an earlier line."""
    seen: set[str] = set()
    lines = dups = 0
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        lines += 1
        if line in seen:
            dups += 1
        else:
            seen.add(line)
    return dups / lines if lines else 0.0


def quality_reason(text: str, config: QualityConfig, is_code: bool = False) -> str | None:
    """Why `text` fails the quality filters (a drop reason), or None when it passes.

    Source code is held only to the length limits: its symbols and repeated lines are normal."""
    if len(text) < config.min_chars:
        return TOO_SHORT
    if len(text) > config.max_chars:
        return TOO_LONG
    if is_code:
        return None
    non_space, letters, symbols = _ratios(text)
    if non_space == 0 or letters / non_space < config.min_alpha_ratio:
        return LOW_ALPHA
    if symbols / non_space > config.max_symbol_ratio:
        return HIGH_SYMBOL
    if "\n" in text and duplicate_line_fraction(text) > config.max_duplicate_line_fraction:
        return REPETITIVE
    return None
