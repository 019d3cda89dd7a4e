"""A PDF's text, for models (issue 25): pypdf, the optional dependency (extra ``pdf``).

pypdf is pure Python (about 4.3 MB installed) and takes about half a second to
import, so it is imported on the first PDF, not at start.
"""

from __future__ import annotations

import io


def pdf_text(data: bytes) -> str:
    """The text of the PDF in ``data``, pages joined by blank lines.

    Raises ``ImportError`` when pypdf is not installed and pypdf's errors for a
    file it cannot read. Blocking (CPU): call it off the event loop.
    """
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages).strip()
