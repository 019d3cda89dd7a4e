"""Token counts, estimated offline (issue 21). Pure functions, no I/O.

There is no tokenizer here (tiktoken downloads its encodings at first use, and
every provider's differs), so a message's token count is an *estimate* made
from its text when it is committed: ASCII letters and digits at about five
a token, punctuation and symbols at about one token each, and every other
character (accented letters, Cyrillic, CJK, emoji) at 0.8 of a token.
Measured against OpenAI's ``o200k_base`` and ``cl100k_base`` on English
prose, Markdown, Python, JSON and mixed-language text, the estimate is within
about 18% of the real count per kind of text (README "Context window" has the
figures); the per-model correction learned from the provider's reported
``usage`` (``actors.context``) takes up the rest.

:func:`estimate_message` adds what a chat API spends around each message
(role and separators, :data:`MESSAGE_OVERHEAD`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

#: tokens a chat API spends around each message (role, separators)
MESSAGE_OVERHEAD = 4
#: tokens that prime the reply (``<|start|>assistant<|message|>``)
REPLY_PRIMING = 3

# each ASCII byte as its class: b"w" a word character (``\w``), b" " whitespace (``\s``),
# b"." anything else (a symbol), so counting a class is one C-speed ``bytes.count``
_CLASSES = (
    bytes(
        ord("w")
        if chr(b).isalnum() or b == ord("_")
        else ord(" ")
        if chr(b) in " \t\n\r\f\v"
        else ord(".")
        for b in range(128)
    )
    + b"." * 128
)


def estimate_text(text: str) -> int:
    """The estimated token count of ``text`` (0 for the empty string).

    ASCII letters and digits count a fifth of a token each, ASCII symbols one,
    whitespace a tenth, any other character 0.8 (weights fitted to
    ``o200k_base``; see the module docstring). Linear in ``len(text)``; the
    same text always gives the same count.
    """
    if not text:
        return 0
    n = len(text)
    if len(text.encode("utf-8", "surrogatepass")) == n:
        ascii_part, others = text, 0
    else:
        ascii_part = text.encode("ascii", "ignore").decode("ascii")
        others = n - len(ascii_part)
    classes = ascii_part.encode("ascii").translate(_CLASSES)
    symbols = classes.count(b".")
    spaces = classes.count(b" ")
    words = len(ascii_part) - symbols - spaces
    # tenths of a token: words 2, symbols 10, spaces 1, others 8
    return max(1, (words * 2 + symbols * 10 + spaces + others * 8 + 9) // 10)


def _call_text(parts: Iterable[Any]) -> str:
    out = []
    for p in parts:
        if isinstance(p, dict) and p.get("type") == "tool-call":
            args = p.get("args")
            out.append(str(p.get("tool_name") or ""))
            out.append(args if isinstance(args, str) else orjson.dumps(args).decode())
    return " ".join(out)


def estimate_message(role: str, content: str, parts: list[Any] | None = None) -> int:
    """The estimated tokens of one message as a chat API receives it: its
    content, the names and arguments of its tool calls (``tool-call`` parts),
    plus :data:`MESSAGE_OVERHEAD`. A tool result is counted from its content
    (what is sent). Pure."""
    extra = _call_text(parts) if parts and role == "assistant" else ""
    return MESSAGE_OVERHEAD + estimate_text(content) + (estimate_text(extra) if extra else 0)


def estimate_json(value: Any) -> int:
    """The estimated tokens of ``value`` sent as JSON (tool definitions)."""
    return estimate_text(orjson.dumps(value).decode()) if value else 0
