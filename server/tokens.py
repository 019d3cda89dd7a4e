"""Bearer tokens: the tokens file and the digest table that answers "whose token is this?".

Pure: no aiohttp, no app state. ``server.auth`` uses it to authenticate
requests through ``server.identity``, which also reads JWTs.

Tokens are held and looked up only as SHA-256 digests, so the time a lookup
takes says nothing about how much of a guessed token was right (what an attacker
could time is a match on the digest of their guess, which tells them nothing).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson

MAX_TOKEN_CHARS = 512
MAX_JWT_CHARS = 16_384  # the longest token presented at all (a JWT with many claims)
MIN_TOKEN_CHARS = 4  # refuses typos like a one-character token; use long random tokens


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is from.

    ``user``: the owner id its sessions are stored under (tenant-qualified when
    the token names a tenant). ``tenant``: the tenant, if any (rate limits count
    it too). ``sid``/``scope``: a scoped token opens only session ``sid``,
    ``read``-only or ``write``. ``expires``: the token's ``exp`` (UNIX seconds),
    if it has one.
    """

    user: str
    tenant: str | None = None
    sid: str | None = None
    scope: Literal["read", "write"] | None = None
    expires: float | None = None


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


class Logins:
    """Server-side logins of the cookie: random id → (principal, expiry).

    Ids come from :func:`secrets.token_urlsafe` (256 bits) and are held as
    SHA-256 digests, like tokens. At most ``max_logins`` are kept; making one
    more forgets the oldest. Not thread-safe (the event loop owns it).
    """

    def __init__(self, max_age: float, max_logins: int = 10_000) -> None:
        self.max_age = max_age
        self.max_logins = max_logins
        self._logins: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._logins)

    def open(self, principal: Principal) -> str:
        """Make a login for ``principal``; return its id (the cookie value).

        It ends after ``max_age`` seconds, or when the principal's token expires
        if that is sooner (a login made with a JWT lasts no longer than the JWT).
        """
        login_id = secrets.token_urlsafe(32)
        expires = time.monotonic() + self.max_age
        if principal.expires is not None:
            expires = min(expires, time.monotonic() + principal.expires - time.time())
        self._logins[_digest(login_id)] = (principal, expires)
        while len(self._logins) > self.max_logins:
            self._logins.popitem(last=False)
        return login_id

    def principal_for(self, login_id: str | None) -> Principal | None:
        """The principal of a live login, or None (unknown, revoked or expired)."""
        if not login_id or len(login_id) > MAX_TOKEN_CHARS:
            return None
        key = _digest(login_id)
        found = self._logins.get(key)
        if found is None:
            return None
        principal, expires = found
        if time.monotonic() >= expires:
            del self._logins[key]
            return None
        return principal

    def revoke(self, login_id: str | None) -> None:
        """Forget a login; idempotent (an unknown id is fine)."""
        if login_id and len(login_id) <= MAX_TOKEN_CHARS:
            self._logins.pop(_digest(login_id), None)
