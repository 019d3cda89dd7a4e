"""Pure renderers from storage data to the bytes of the HTTP API.

Storage returns data (plain text and offsets); what the API spells as markup
is made here, at the edge. Nothing here does I/O or imports ``storage``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence


def snippet_html(text: str, spans: Sequence[Sequence[int]]) -> str:
    """``text`` HTML-escaped (quotes too), with each ``[start, end)`` span in ``<mark>``.

    ``spans`` are code-point offsets into ``text``, in order and not
    overlapping (as :func:`storage.search.snippet_spans` gives them); offsets
    are clamped to the text. Pure.
    """
    out: list[str] = []
    pos = 0
    for start, end in spans:
        start, end = max(pos, min(start, len(text))), max(pos, min(end, len(text)))
        out.append(html.escape(text[pos:start], quote=True))
        out.append("<mark>" + html.escape(text[start:end], quote=True) + "</mark>")
        pos = end
    out.append(html.escape(text[pos:], quote=True))
    return "".join(out)
