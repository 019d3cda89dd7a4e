"""Making the responder the settings name (``--responder``), for a server and for a
cluster's shards.

Kept apart from :mod:`server.app` so that a shard, which unpickles
:func:`shard_responder` with its spec when Ray (re)starts it, imports only this
and the settings, not the HTTP server's routes (issue 18: a restarted shard's
imports are on the failover's path).
"""

from __future__ import annotations

from typing import Any

import aiohttp

from actors.model_parts import datadir_blobs
from actors.responders import EchoResponder, Responder
from server.settings import Settings
from storage.layout import DataDir


def make_responder(
    settings: Settings, http: aiohttp.ClientSession, datadir: DataDir | None = None
) -> Responder:
    """The responder the settings name; it reads attachments from ``datadir``."""
    attachments = settings.attachments(None if datadir is None else datadir_blobs(datadir))
    if settings.responder == "openai":
        from server.openai import OpenAIResponder

        return OpenAIResponder.from_settings(settings, http, attachments)
    return EchoResponder(settings.echo_words_per_second, attachments)


def shard_responder(settings: dict[str, Any], datadir: DataDir | None = None) -> Responder:
    """The responder of a shard (cluster mode), made in the shard's event loop from
    the front's settings; its HTTP client lives as long as the shard; it reads
    attachments from the shard's ``datadir``."""
    return make_responder(Settings(**settings), aiohttp.ClientSession(), datadir)
