"""Bearer tokens: the tokens file and the digest table that answers "whose token is this?".

Pure: no aiohttp, no app state. ``server.auth`` uses it to authenticate
requests; ``server.keys`` names its :class:`Tokens` as the type of ``TOKENS``.

Tokens are held and looked up only as SHA-256 digests, so the time a lookup
takes says nothing about how much of a guessed token was right (what an attacker
could time is a match on the digest of their guess, which tells them nothing).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson

MAX_TOKEN_CHARS = 512
MIN_TOKEN_CHARS = 4  # refuses typos like a one-character token; use long random tokens


class TokensError(ValueError):
    """The tokens file is missing, unreadable or not a JSON object of strings."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Tokens:
    """Token → user id, held as digests. Immutable after construction."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self._users = {_digest(t): u for t, u in mapping.items()}

    def __len__(self) -> int:
        return len(self._users)

    def user_for(self, token: str | None) -> str | None:
        """The user id of ``token``, or None if it is not a known token."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        return self._users.get(_digest(token))


def load_tokens(path: str | None) -> Tokens | None:
    """Read a tokens file; None when ``path`` is None (the server runs open).

    Raises :class:`TokensError` with a message for the operator when the file
    cannot be read, is not a JSON object mapping non-empty token strings to
    non-empty user id strings, or holds no token at all.
    """
    if path is None:
        return None
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise TokensError(f"cannot read tokens file {path}: {exc.strerror or exc}") from exc
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise TokensError(f"tokens file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not data:
        raise TokensError(
            f'tokens file {path} must be a non-empty JSON object like {{"tok-a": "alice"}}'
        )
    for token, user in data.items():
        if not token or not isinstance(user, str) or not user:
            raise TokensError(
                f"tokens file {path}: every token must map to a non-empty user id string"
            )
        if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS or any(
            c.isspace() or c in ",;" for c in token
        ):
            raise TokensError(
                f"tokens file {path}: tokens must be at least {MIN_TOKEN_CHARS} and at most "
                f"{MAX_TOKEN_CHARS} characters, without spaces, commas or semicolons"
            )
    return Tokens(data)
