"""The ``.args`` syntax (llamafile-compatible) and how baked arguments meet the command line.

Syntax: arguments are separated by whitespace; ``#`` at the start of a word comments out the
rest of the line; '...' is literal; "..." understands C escapes (``\\n``, ``\\t``, ``\\xHH``,
``\\\\``, ``\\"``, ``\\$``) and ``$VAR``/``${VAR}``; outside quotes a backslash escapes the next
character and ``$VAR`` expands. Expansion never splits words. A bare ``...`` marks where the
user's command-line arguments go; without one they are appended.
"""

from __future__ import annotations

import os
import re
from typing import List, Mapping, Optional, Sequence, Union

from ..errors import ArgsSyntaxError

#: The placeholder for the user's arguments.
ELLIPSIS = "..."
#: Largest ``.args`` text we accept; real ones are a few hundred bytes.
MAX_ARGS_BYTES = 1 << 20

_C_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "a": "\a", "b": "\b",
              "f": "\f", "v": "\v", "\\": "\\", '"': '"', "'": "'", "$": "$", "?": "?"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


class _Placeholder:
    """The ``...`` marker in a parsed list (distinct from a quoted '...')."""

    def __repr__(self) -> str:
        return "..."


PLACEHOLDER = _Placeholder()
Word = Union[str, _Placeholder]


def parse(text: str, env: Optional[Mapping[str, str]] = None) -> List[Word]:
    """Split ``.args`` text into words; a bare ``...`` becomes :data:`PLACEHOLDER`."""
    if len(text) > MAX_ARGS_BYTES:
        raise ArgsSyntaxError(f".args is too large ({len(text)} bytes; at most {MAX_ARGS_BYTES})")
    env = os.environ if env is None else env
    words: List[Word] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c == "#":
            nl = text.find("\n", i)
            i = n if nl < 0 else nl + 1
            continue
        word: List[str] = []
        quoted = False
        while i < n and not text[i].isspace():
            c = text[i]
            if c == "'":
                end = text.find("'", i + 1)
                if end < 0:
                    raise ArgsSyntaxError(f".args: unterminated ' quote at offset {i}")
                word.append(text[i + 1:end])
                quoted, i = True, end + 1
            elif c == '"':
                i = _double_quoted(text, i + 1, word, env)
                quoted = True
            elif c == "\\":
                if i + 1 >= n:
                    raise ArgsSyntaxError(".args: backslash at end of text")
                if text[i + 1] != "\n":  # backslash-newline continues the word
                    word.append(text[i + 1])
                i += 2
            elif c == "$":
                i = _expand(text, i, word, env)
            else:
                word.append(c)
                i += 1
        joined = "".join(word)
        words.append(PLACEHOLDER if joined == ELLIPSIS and not quoted else joined)
    return words


def _double_quoted(text: str, i: int, out: List[str], env: Mapping[str, str]) -> int:
    start, n = i - 1, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            return i + 1
        if c == "\\":
            if i + 1 >= n:
                break
            e = text[i + 1]
            if e == "x":
                digits = re.match(r"[0-9A-Fa-f]{1,2}", text[i + 2:i + 4])
                if not digits:
                    raise ArgsSyntaxError(f".args: bad \\x escape at offset {i}")
                out.append(chr(int(digits.group(), 16)))
                i += 2 + len(digits.group())
                continue
            out.append(_C_ESCAPES.get(e, "\\" + e))
            i += 2
        elif c == "$":
            i = _expand(text, i, out, env)
        else:
            out.append(c)
            i += 1
    raise ArgsSyntaxError(f'.args: unterminated " quote at offset {start}')


def _expand(text: str, i: int, out: List[str], env: Mapping[str, str]) -> int:
    """Expand ``$NAME`` or ``${NAME}`` at ``text[i] == '$'``; a lone ``$`` stays literal."""
    if text.startswith("${", i):
        end = text.find("}", i + 2)
        name = text[i + 2:end] if end >= 0 else ""
        if end < 0 or not _NAME.fullmatch(name):
            raise ArgsSyntaxError(f".args: bad ${{...}} at offset {i}")
        out.append(env.get(name, ""))
        return end + 1
    m = _NAME.match(text, i + 1)
    if not m:
        out.append("$")
        return i + 1
    out.append(env.get(m.group(), ""))
    return m.end()


def merge(baked: Sequence[Word], user: Sequence[str]) -> List[str]:
    """Put the user's arguments where ``...`` stands, or after the baked ones.

    Later flags win in our parser, so user arguments placed after the baked ones override them.
    """
    out: List[str] = []
    placed = False
    for w in baked:
        if w is PLACEHOLDER:
            if not placed:
                out.extend(user)
                placed = True
        else:
            out.append(str(w))
    if not placed:
        out.extend(user)
    return out


def quote(word: Word) -> str:
    """Render one word so that :func:`parse` gives it back unchanged."""
    if word is PLACEHOLDER:
        return ELLIPSIS
    word = str(word)
    if word and _SAFE.fullmatch(word) and word != ELLIPSIS:
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def render(words: Sequence[Word]) -> str:
    """Render words as ``.args`` text (one line, newline-terminated)."""
    return " ".join(quote(w) for w in words) + "\n"
