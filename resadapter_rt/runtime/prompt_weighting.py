"""Prompt weighting syntaxes: A1111's ``(text:1.3)`` read here, compel's ``text++`` read by compel itself.

``a1111`` (the default): ``(text)`` multiplies the weight by 1.1, ``[text]`` divides it by 1.1, ``(text:1.3)``
multiplies it by 1.3, groups nest (weights multiply, innermost first, as A1111 does), ``\\(`` ``\\)`` ``\\[``
``\\]`` ``\\\\`` are the literal characters, and ``BREAK`` (upper case, a word of its own) starts a new
75-token chunk. The result is compel's weighted fragments, one ``FlattenedPrompt`` per BREAK-separated
segment, joined as compel's ``.and()`` joins prompts (their embeddings concatenated along the sequence,
which is what BREAK does). Unlike A1111, an unclosed or unmatched bracket and a weight that is not a
non-negative number are refused in one line naming the column (A1111 would silently weight to the end).

``compel``: compel's own grammar (``text++``, ``(text)1.3``, ``("a", "b").blend(0.7, 0.3)``, ``.and()``),
parsed by compel. Compel reads unbalanced parentheses as text; here they are refused like A1111's.

``none``: the prompt is plain text, as before this option existed.

A prompt that carries no weights gives the text it stands for (``plain``) and is encoded exactly as
``none`` would encode that text, bit for bit.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import ResAdapterRTError

SYNTAXES = ("a1111", "compel", "none")
DEFAULT_SYNTAX = "a1111"
A1111_UP = 1.1  # A1111's multiplier for (text); [text] divides by it
ESCAPABLE = "()[]\\"
BREAK = re.compile(r"\s*\bBREAK\b\s*")
NUMBER = re.compile(r"\s*([+-]?[0-9.]+)\s*\)")  # what A1111 reads as a weight: ':' number ')'
WEIGHT_LIKE = re.compile(r"\s*([+\-.0-9][^()\[\]\s]*)\s*\)")  # starts like a number but may not be one
EMPTY_WEIGHT = re.compile(r"\s*\)")
EXTRA_NETWORK = re.compile(r"<(lora|lyco|hypernet):[^>]*>", re.IGNORECASE)
COMPEL_A1111_WEIGHT = re.compile(r"\([^()]*:\s*[0-9.]+\s*\)")
_BREAK_MARK = object()


@dataclass(frozen=True)
class WeightedPrompt:
    """A prompt read in one syntax: its segments of (text, weight) fragments, or compel's parse of it."""

    text: str  # as written
    syntax: str
    segments: tuple[tuple[tuple[str, float], ...], ...] = ()  # a1111: BREAK-separated segments
    conjunction: Any = None  # compel: compel's Conjunction

    @property
    def plain(self) -> str | None:
        """The text a prompt without weights stands for; None when it carries weights (or BREAK, blends...)."""
        if self.syntax == "none":
            return self.text
        if self.syntax == "a1111":
            if len(self.segments) == 1 and len(self.segments[0]) == 1 and self.segments[0][0][1] == 1.0:
                return self.segments[0][0][0]
            return None
        prompts = self.conjunction.prompts
        if len(prompts) == 1 and type(prompts[0]).__name__ == "FlattenedPrompt" and len(prompts[0].children) == 1:
            fragment = prompts[0].children[0]
            # compel puts a space after every comma; with no weights the prompt is kept as written instead
            if fragment.weight == 1.0 and fragment.text == re.sub(r",(\S)", r", \1", self.text):
                return self.text
        return None

    @property
    def pooled_text(self) -> str:
        """The text SDXL's pooled embedding is taken from: compel takes the prompt as written; A1111 prompts
        give their text without the syntax."""
        if self.syntax == "a1111":
            return " ".join("".join(text for text, _ in segment) for segment in self.segments)
        return self.text

    def compel_conjunction(self):
        """compel's Conjunction for this prompt: one FlattenedPrompt per segment (a1111), or compel's own parse."""
        if self.conjunction is not None:
            return self.conjunction
        from compel.prompt_parser import Conjunction, FlattenedPrompt, Fragment

        return Conjunction([FlattenedPrompt([Fragment(text, weight) for text, weight in segment]) for segment in self.segments])


def check_prompt_weighting(name: Any) -> str:
    """The syntax name, or a one-line error listing the choices."""
    if name not in SYNTAXES:
        raise ResAdapterRTError(f"unknown prompt weighting {name!r}; choose one of {', '.join(SYNTAXES)}")
    return name


def parse_prompt(text: str, syntax: str = DEFAULT_SYNTAX) -> WeightedPrompt:
    """Read ``text`` in ``syntax`` (a1111 | compel | none); bad syntax is a one-line error naming the column."""
    check_prompt_weighting(syntax)
    if syntax == "none":
        return WeightedPrompt(text, syntax)
    if syntax == "a1111":
        return WeightedPrompt(text, syntax, segments=parse_a1111(text))
    return WeightedPrompt(text, syntax, conjunction=parse_compel(text))


def check_prompts(texts: list[str], syntax: str) -> None:
    """Parse every prompt (and the syntax name), so that bad syntax is refused before anything runs."""
    check_prompt_weighting(syntax)
    for text in texts:
        parse_prompt(text, syntax)


def _error(text: str, column: int, message: str, syntax: str = "a1111") -> ResAdapterRTError:
    """``message`` with ``{column}`` replaced by the 1-based column and the text around it."""
    near = text[max(0, column - 12):column + 12]
    return ResAdapterRTError(f"{syntax} prompt weighting: " + message.replace("{column}", f"{column + 1} ({near!r})")
                             + " (prompt weighting none reads a prompt as plain text)")


@functools.lru_cache(maxsize=256)
def parse_a1111(text: str) -> tuple[tuple[tuple[str, float], ...], ...]:
    """A1111's attention syntax -> BREAK-separated segments of (text, weight) fragments, equal weights merged."""
    tag = EXTRA_NETWORK.search(text)
    if tag:
        raise _error(text, tag.start(), f"{tag.group(0)} at column {{column}} is an A1111 extra-network tag, which is not "
                     f"applied here; remove it (merge a LoRA at export with --lora FILE:WEIGHT)")
    pieces: list = []  # [text, weight] lists and _BREAK_MARK
    opened: list[tuple[str, int, int]] = []  # (bracket, column, index of its first piece)
    buffer: list[str] = []

    def flush() -> None:
        if buffer:
            for index, part in enumerate(BREAK.split("".join(buffer))):
                if index:
                    pieces.append(_BREAK_MARK)
                pieces.append([part, 1.0])
            buffer.clear()

    def close(multiplier: float) -> None:
        flush()
        _, _, start = opened.pop()
        for piece in pieces[start:]:
            if piece is not _BREAK_MARK:
                piece[1] *= multiplier

    column = 0
    while column < len(text):
        char = text[column]
        if char == "\\" and column + 1 < len(text) and text[column + 1] in ESCAPABLE:
            buffer.append(text[column + 1])
            column += 2
            continue
        if char in "([":
            flush()
            opened.append((char, column, len(pieces)))
        elif char in ")]":
            want = "(" if char == ")" else "["
            if not opened:
                raise _error(text, column, f"unmatched '{char}' at column {{column}}; remove it or write \\{char} for the "
                                           f"character itself")
            if opened[-1][0] != want:
                raise _error(text, column, f"'{char}' at column {{column}} closes '{opened[-1][0]}' opened at column "
                                           f"{opened[-1][1] + 1}; close that one with '{')' if opened[-1][0] == '(' else ']'}' first")
            close(A1111_UP if char == ")" else 1 / A1111_UP)
        elif char == ":" and opened and opened[-1][0] == "[":
            raise _error(text, column, "':' inside [...] at column {column} is A1111 prompt editing ([from:to:when]), which "
                                       "is not supported; remove it, or write \\[ \\] for the brackets themselves")
        elif char == ":" and opened:
            column = _weight(text, column, close, buffer)
            continue
        else:
            buffer.append(char)
        column += 1
    if opened:
        bracket, where, _ = opened[-1]
        raise _error(text, where, f"'{bracket}' at column {{column}} is never closed; close it with "
                                  f"'{')' if bracket == '(' else ']'}' or write \\{bracket} for the character itself")
    flush()
    return _segments(pieces)


def _weight(text: str, column: int, close, buffer: list[str]) -> int:
    """At a ':' inside '(': a weight closing the group (returns the column after its ')'), or a plain ':'."""
    rest = text[column + 1:]
    match = NUMBER.match(rest)
    if match:
        try:
            weight = float(match.group(1))
        except ValueError:
            weight = None
        if weight is not None and math.isfinite(weight):
            if weight < 0:
                raise _error(text, column + 1 + match.start(1), f"weight {match.group(1)} at column {{column}} is negative; "
                                                                "use a weight >= 0, e.g. (text:0.8)")
            close(weight)
            return column + 1 + match.end()
    match = match or WEIGHT_LIKE.match(rest)
    if match:
        raise _error(text, column + 1 + match.start(1), f"weight {match.group(1)!r} at column {{column}} is not a number; "
                                                        "write e.g. (text:1.2)")
    if EMPTY_WEIGHT.match(rest):
        raise _error(text, column, "':' at column {column} has no weight after it; write e.g. (text:1.2)")
    buffer.append(":")  # a colon in the text, e.g. (style: anime) -- as A1111 reads it
    return column + 1


def _segments(pieces: list) -> tuple[tuple[tuple[str, float], ...], ...]:
    segments, current = [], []
    for piece in [*pieces, _BREAK_MARK]:
        if piece is _BREAK_MARK:
            merged: list[list] = []
            for fragment_text, weight in current:
                if not fragment_text:
                    continue
                if merged and merged[-1][1] == weight:
                    merged[-1][0] += fragment_text
                else:
                    merged.append([fragment_text, weight])
            segments.append(tuple((t, w) for t, w in merged) or (("", 1.0),))
            current = []
        else:
            current.append(piece)
    return tuple(segments)


@functools.lru_cache(maxsize=256)
def parse_compel(text: str):
    """compel's parse of ``text`` (a Conjunction), after checking what compel would silently read as text.

    Cached: compel builds its pyparsing grammar per parser (about 50 ms), and a request parses its prompts
    twice (checked in ``prepare``, encoded in ``encode``); compel reads the result without changing it."""
    depth: list[int] = []
    quoted, column = False, 0
    while column < len(text):
        char = text[column]
        if char == "\\":
            column += 2
            continue
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth.append(column)
        elif not quoted and char == ")":
            if not depth:
                raise _error(text, column, "unmatched ')' at column {column}; remove it or write \\) for the character itself",
                             "compel")
            depth.pop()
        column += 1
    if depth:
        raise _error(text, depth[-1], "'(' at column {column} is never closed; close it with ')' or write \\( for the "
                                      "character itself", "compel")
    a1111 = COMPEL_A1111_WEIGHT.search(text)
    if a1111:
        raise _error(text, a1111.start(), f"{a1111.group(0)} at column {{column}} is A1111 syntax; use --prompt-weighting "
                                          "a1111, or write compel's (text)1.2", "compel")
    from compel.prompt_parser import PromptParser

    from ..errors import first_line

    try:
        conjunction = PromptParser().parse_conjunction(text)
    except Exception as exc:  # pyparsing's and compel's own exceptions
        raise ResAdapterRTError(f"prompt {text!r}: compel cannot parse it ({first_line(exc)})") from exc
    if conjunction.lora_weights:
        raise ResAdapterRTError(f"prompt {text!r}: compel's withLora() is not applied here; remove it "
                                "(merge a LoRA at export with --lora FILE:WEIGHT)")
    if any(getattr(p, "wants_cross_attention_control", False) for p in conjunction.prompts):
        raise ResAdapterRTError(f"prompt {text!r}: compel's .swap() (cross-attention control) is not supported; remove it")
    return conjunction
