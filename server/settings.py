"""Server settings: command-line flags, ``ROOST_*`` environment variables, defaults.

Precedence: a flag given on the command line, then the environment variable,
then the default. Every limit of SPEC section 6 is here with its default.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from actors.actor import ActorConfig


class Settings(BaseModel):
    """Everything configurable about a Roost server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8080, ge=0, le=65535, description="port to bind (0 = any free port)")
    data_dir: str = Field("./roost-data", description="where the catalog and sessions live")
    synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = Field(
        "FULL", description="SQLite synchronous level of session files (see README)"
    )
    idle_timeout: float = Field(30.0, gt=0, description="seconds before an idle actor hibernates")
    max_live_actors: int = Field(
        1000, ge=1, description="cap on live session actors (lowered to fit the descriptor limit)"
    )
    max_batch: int = Field(256, ge=1, description="most mutations in one group commit")
    write_threads: int = Field(
        16, ge=1, description="threads for file opens, checkpoints, indexing, uploads"
    )
    fsync: Literal["auto", "threads"] = Field(
        "auto",
        description="how commits are flushed: auto = Linux AIO if it works, else threads",
    )
    disk_reserve: int = Field(
        16 << 20,
        ge=0,
        description="bytes kept free on the data dir's disk: below, writes answer 507 (0 = off)",
    )
    event_retention: int = Field(10_000, ge=100, description="events kept per session for replay")
    subscriber_queue: int = Field(
        1024, ge=8, description="frames queued per subscriber before drop"
    )
    allowed_origins: str = Field(
        "", description="comma-separated browser origins allowed besides the server's own"
    )
    keepalive_timeout: float = Field(
        15.0, gt=0, description="seconds an idle client connection (or a silent new one) is kept"
    )
    ws_heartbeat: float = Field(30.0, gt=0, description="seconds between WebSocket pings")
    insecure: bool = Field(False, description="allow a non-loopback bind without tokens")
    tokens_file: str | None = Field(None, description="JSON file mapping tokens to user ids")
    # replies
    responder: Literal["echo", "openai"] = Field("echo", description="who writes replies")
    echo_words_per_second: float = Field(20.0, ge=0, description="echo pace (0 = no pauses)")
    flush_interval: float = Field(
        0.05, gt=0, le=0.1, description="seconds between commits of streaming text (<= 0.1)"
    )
    shutdown_grace: float = Field(2.0, ge=0, description="seconds replies get at shutdown")
    sse_heartbeat: float = Field(15.0, gt=0, description="seconds between SSE keep-alives")
    openai_base_url: str = Field(
        "https://api.openai.com/v1", description="OpenAI-compatible API base URL"
    )
    openai_api_key: str | None = Field(None, description="API key for the openai responder")
    openai_model: str = Field("gpt-4o-mini", description="model of the openai responder")
    openai_fallback_models: str = Field(
        "", description="comma-separated models to try, in order, when the first fails"
    )
    openai_timeout: float = Field(60.0, gt=0, description="seconds before a provider call fails")
    # limits
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest JSON request body")
    max_content_chars: int = Field(100_000, ge=1, description="longest message content")
    max_metadata_bytes: int = Field(16_384, ge=2, description="largest metadata object (JSON)")
    max_metadata_depth: int = Field(8, ge=1, description="deepest nesting inside metadata")
    max_title_chars: int = Field(200, ge=1, description="longest session title")
    max_page_limit: int = Field(200, ge=1, description="largest page size")
    max_parts: int = Field(256, ge=1, description="most parts in one message")
    max_attachment_bytes: int = Field(25 << 20, ge=1, description="largest attachment upload")
    max_ws_frame_bytes: int = Field(1 << 20, ge=1024, description="largest WebSocket frame")
    max_import_bytes: int = Field(64 << 20, ge=1024, description="largest session import (JSON)")
    max_concurrent_imports: int = Field(
        2, ge=1, description="imports parsed at once (each holds its body); others wait"
    )
    max_search_chars: int = Field(1000, ge=1, description="longest search query")
    # access (SPEC section 7)
    rate_user_per_sec: float = Field(
        20.0, ge=0, description="changes a user may make per second, sustained (0 = no limit)"
    )
    rate_user_burst: int = Field(200, ge=1, description="changes a user may make in a burst")
    rate_session_per_sec: float = Field(
        10.0, ge=0, description="changes per second one user may make to one session (0 = off)"
    )
    rate_session_burst: int = Field(
        100, ge=1, description="changes one user may make to one session in a burst"
    )
    login_cookie_max_age: int = Field(
        30 * 86400, ge=60, description="seconds the login cookie of POST /api/login lasts"
    )

    def allowed_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()]

    def actor_config(self) -> ActorConfig:
        return ActorConfig(
            synchronous=self.synchronous,
            idle_timeout=self.idle_timeout,
            max_live=self.max_live_actors,
            max_batch=self.max_batch,
            event_retention=self.event_retention,
            subscriber_queue=self.subscriber_queue,
            flush_interval=self.flush_interval,
            shutdown_grace=self.shutdown_grace,
        )


def settings_from(
    overrides: dict[str, Any], environ: os._Environ[str] | dict[str, str] | None = None
) -> Settings:
    """Settings from explicit ``overrides`` (None = not given) over ``ROOST_*`` vars."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        key = f"ROOST_{name.upper()}"
        if key in env:
            raw = env[key]
            values[name] = raw.lower() in ("1", "true", "yes", "on") if name == "insecure" else raw
    for name, value in overrides.items():
        if value is not None:
            values[name] = value
    return Settings.model_validate(values, strict=False)
