"""Titles made for a chat after its first reply (issue 23).

:func:`make_title` asks the responder for a short summary of the first
exchange; the echo responder (offline, deterministic) and any responder that
fails or takes too long get the first words of the user's message instead.
"""

from __future__ import annotations

import asyncio
import logging

from actors.responders import Delta, Responder

log = logging.getLogger("roost.actors")

MAX_TITLE_CHARS = 80
QUOTES = "\"' \u201c\u201d\u2018\u2019"
FIRST_WORDS = 6
TITLE_TIMEOUT = 20.0
TITLE_PROMPT = (
    "Write a title of at most six words for a chat that starts like this. "
    "Answer with the title only, no quotes.\n\nUser: {user}\n\nAssistant: {reply}"
)


def first_words(text: str, n: int = FIRST_WORDS) -> str:
    """The first ``n`` words of ``text`` on one line, at most MAX_TITLE_CHARS. Pure."""
    words = text.split()
    title = " ".join(words[:n])
    if len(title) > MAX_TITLE_CHARS:
        title = title[: MAX_TITLE_CHARS - 1].rstrip() + "…"
    elif len(words) > n:
        title += "…"
    return title


def clean_title(text: str) -> str:
    """A responder's answer as a title: one line, no quotes, at most MAX_TITLE_CHARS."""
    line = " ".join(text.strip().splitlines()[0].split()) if text.strip() else ""
    line = line.strip(QUOTES).rstrip(".")
    if len(line) > MAX_TITLE_CHARS:
        line = line[: MAX_TITLE_CHARS - 1].rstrip() + "…"
    return line


async def make_title(responder: Responder, user_text: str, reply_text: str) -> str:
    """A short title for a chat whose first exchange is ``user_text`` / ``reply_text``.

    Never raises: on any failure the title is the user's first words ("" if
    there are none).
    """
    fallback = first_words(user_text)
    if responder.name == "echo":
        return fallback
    prompt = TITLE_PROMPT.format(user=user_text[:2000], reply=reply_text[:2000])

    async def ask() -> str:
        out: list[str] = []
        async for item in responder.stream([{"role": "user", "content": prompt}]):
            if isinstance(item, Delta) and item.text:
                out.append(item.text)
        return "".join(out)

    try:
        title = clean_title(await asyncio.wait_for(ask(), TITLE_TIMEOUT))
    except Exception as exc:
        log.info("the responder made no title (%r); using the first words", exc)
        return fallback
    return title or fallback
