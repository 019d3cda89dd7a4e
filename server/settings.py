"""Server settings: command-line flags, ``ROOST_*`` environment variables, defaults.

Precedence: a flag given on the command line, then the environment variable,
then the default. Every limit of SPEC section 6 is here with its default.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from actors.actor import ActorConfig
from actors.litestream import L0_RETENTION
from actors.model_parts import Attachments, BlobReader, ModelCaps, parse_caps
from server.pdftext import pdf_text


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
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto",
        description="event loop: auto = uvloop when it is installed, else asyncio's own",
    )
    disk_reserve: int = Field(
        16 << 20,
        ge=0,
        description="bytes kept free on the data dir's disk: below, writes answer 507 (0 = off)",
    )
    event_retention: int = Field(10_000, ge=100, description="events kept per session for replay")
    # retention (issue 23)
    session_ttl: float = Field(
        0.0, ge=0, description="seconds of inactivity before a session is deleted (0 = never)"
    )
    temporary_ttl: float = Field(
        3600.0, ge=0, description="seconds of inactivity before a temporary session is deleted"
    )
    sweep_interval: float = Field(
        60.0, ge=0, description="seconds between two sweeps for expired sessions (0 = no sweep)"
    )
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
    # identity (README "Identity"; server.identity)
    jwt_jwks_url: str | None = Field(
        None, description="JWKS URL of the app's token signer (RS256/ES256/EdDSA JWTs)"
    )
    jwt_jwks_min_interval: float = Field(
        10.0, gt=0, description="least seconds between JWKS refetches on an unknown kid"
    )
    jwt_secret: str | None = Field(None, description="HMAC secret of the app's JWTs (HS256)")
    jwt_public_key: str | None = Field(
        None, description="PEM file of the public key of the app's JWTs (RSA, EC, Ed25519)"
    )
    jwt_issuer: str | None = Field(None, description="required iss of the app's JWTs")
    jwt_audience: str | None = Field(None, description="required aud of the app's JWTs")
    jwt_user_claim: str = Field("sub", min_length=1, description="JWT claim naming the user")
    jwt_tenant_claim: str | None = Field(
        None, description="JWT claim naming the tenant (sessions belong to tenant and user)"
    )
    jwt_leeway: float = Field(
        30.0, ge=0, le=600, description="seconds of clock skew allowed on exp, nbf and iat"
    )
    token_signing_key: str | None = Field(
        None,
        min_length=32,
        description="secret (>= 32 chars) Roost signs scoped tokens with (default: a random "
        "key kept in the data dir)",
    )
    max_scoped_token_ttl: int = Field(
        30 * 86400, ge=60, description="longest expires_in of a scoped token, in seconds"
    )
    # replies
    responder: Literal["echo", "openai"] = Field("echo", description="who writes replies")
    echo_words_per_second: float = Field(20.0, ge=0, description="echo pace (0 = no pauses)")
    flush_interval: float = Field(
        0.05, gt=0, le=0.1, description="seconds between commits of streaming text (<= 0.1)"
    )
    shutdown_grace: float = Field(2.0, ge=0, description="seconds replies get at shutdown")
    # turns and tools (issue 19)
    on_busy: Literal["reject", "queue", "interrupt", "rollback"] = Field(
        "queue", description="what a chat does while a reply runs (unless it or its session says)"
    )
    tool_timeout: float = Field(
        600.0, ge=0, description="seconds a tool call waits for its result (0 = forever)"
    )
    # the model's context window (issue 21; README "Context window")
    model_context: str = Field(
        '{"*": 8192}',
        description='JSON object: model name -> context size in tokens ("*": any other model)',
    )
    reply_reserve: float = Field(
        0.25, gt=0, lt=1, description="fraction of the context kept free for the reply"
    )
    compact_at: float = Field(
        0.6,
        ge=0,
        le=1,
        description="compact a branch when its uncovered history passes this ratio of the "
        "context (0 = never on its own)",
    )
    sse_heartbeat: float = Field(15.0, gt=0, description="seconds between SSE keep-alives")
    openai_base_url: str = Field(
        "https://api.openai.com/v1", description="OpenAI-compatible API base URL"
    )
    openai_api_key: str | None = Field(None, description="API key for the openai responder")
    openai_model: str = Field("gpt-4o-mini", description="model of the openai responder")
    openai_fallback_models: str = Field(
        "", description="comma-separated models to try, in order, when the first fails"
    )
    openai_connect_timeout: float = Field(
        10.0, gt=0, description="seconds to connect to the provider"
    )
    openai_idle_timeout: float = Field(
        60.0, gt=0, description="seconds the provider may stay silent (headers, between chunks)"
    )
    openai_timeout: float | None = Field(
        None, gt=0, description="old name of --openai-idle-timeout"
    )
    openai_reply_timeout: float = Field(
        600.0, gt=0, description="seconds a whole reply may take (every model and retry)"
    )
    openai_retries: int = Field(
        2, ge=0, le=10, description="retries of a 429 or 5xx answer before the first byte"
    )
    # attachments into the model (issue 25; actors.model_parts)
    model_capabilities: str | None = Field(
        None,
        description='JSON: model name or pattern -> {"images": bool, "pdf": "text"|"file"|"none",'
        ' "text_tokens": int}; what each model is sent (default: images, PDFs as text)',
    )
    attachment_text_tokens: int = Field(
        8000, ge=1, description="most tokens of one text file (or PDF text) inlined for a model"
    )
    image_base_url: str | None = Field(
        None,
        description="send images as this base URL + their API path (the provider fetches"
        " them) instead of data: URLs",
    )
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest JSON request body")
    max_content_chars: int = Field(100_000, ge=1, description="longest message content")
    max_metadata_bytes: int = Field(16_384, ge=2, description="largest metadata object (JSON)")
    max_metadata_depth: int = Field(8, ge=1, description="deepest nesting inside metadata")
    max_title_chars: int = Field(200, ge=1, description="longest session title")
    max_page_limit: int = Field(200, ge=1, description="largest page size")
    max_parts: int = Field(256, ge=1, description="most parts in one message")
    max_attachment_bytes: int = Field(25 << 20, ge=1, description="largest attachment upload")
    max_session_bytes: int = Field(
        1 << 30,
        ge=0,
        description="most bytes of attachments one session holds (same bytes count once;"
        " 0 = no cap)",
    )
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
    rate_tenant_per_sec: float = Field(
        100.0, ge=0, description="changes all users of one tenant may make per second (0 = off)"
    )
    rate_tenant_burst: int = Field(
        1000, ge=1, description="changes all users of one tenant may make in a burst"
    )
    login_cookie_max_age: int = Field(
        30 * 86400, ge=60, description="seconds the login cookie of POST /api/login lasts"
    )
    # logs
    access_log: str = Field(
        "on", description="one log line per request: on, off, or sample:N (1 in N; errors always)"
    )
    log_format: Literal["text", "json"] = Field("text", description="log line format")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="least severe level logged"
    )
    # cluster mode (README "Cluster mode"; actors.cluster)
    cluster: str | None = Field(
        None, description="Ray address (HOST:PORT): run as a stateless front of that cluster"
    )
    cluster_name: str = Field(
        "roost",
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        description="the cluster's Ray namespace (its shards' names live there)",
    )
    shards: int = Field(
        64, ge=1, le=4096, description="shards of the cluster (every front must agree)"
    )
    request_timeout: float = Field(
        30.0, gt=0, description="seconds a front waits for a shard before answering 503"
    )
    shard_transport: Literal["direct", "ray"] = Field(
        "direct",
        description="how a front's session calls reach shards: direct = a TCP stream per "
        "shard (its address learned from Ray), ray = Ray actor calls",
    )
    # replication (README "Replication"; actors.replica): Litestream to S3-compatible storage
    replica: str | None = Field(
        None,
        description="s3://BUCKET/PREFIX: replicate every session file there with Litestream; "
        "a change is acknowledged once the replica holds it (credentials from AWS_*)",
    )
    replica_endpoint: str | None = Field(
        None, description="the S3-compatible store's URL (for stores other than AWS S3)"
    )
    replica_idle: float = Field(
        10.0,
        gt=0,
        description="seconds a live session may go unwritten before Litestream stops watching "
        "it (its next write registers it again)",
    )
    replica_l0_retention: float = Field(
        L0_RETENTION,
        gt=0,
        le=86400,
        description="seconds Litestream keeps each sync's own (L0) file in the replica: a "
        "point-in-time restore is exact to the change for times this recent, and for older "
        "times may miss up to 3 s of changes before the time; longer costs a session "
        "written without pause more per append",
    )

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, values: Any) -> Any:
        """``--openai-timeout`` sets ``--openai-idle-timeout`` unless that is given too."""
        if isinstance(values, dict) and values.get("openai_timeout") is not None:
            values = dict(values)
            values.setdefault("openai_idle_timeout", values["openai_timeout"])
        return values

    @model_validator(mode="after")
    def _one_jwt_key(self) -> Settings:
        given = [
            f
            for f in ("jwt_jwks_url", "jwt_secret", "jwt_public_key")
            if getattr(self, f) is not None
        ]
        if len(given) > 1:
            flags = " and ".join("--" + f.replace("_", "-") for f in given)
            raise ValueError(f"give one way to verify JWTs, not {flags}")
        if self.jwt_jwks_url is not None:
            check_base_url(self.jwt_jwks_url)
        if self.replica is not None:
            from actors.replica_store import Target

            Target.parse(self.replica, self.replica_endpoint)  # ValueError: a clear message
        elif self.replica_endpoint is not None:
            raise ValueError("--replica-endpoint needs --replica s3://BUCKET/PREFIX")
        return self

    @field_validator("model_context")
    @classmethod
    def _model_context(cls, value: str) -> str:
        context_sizes(value)
        return value

    @field_validator("synchronous", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator(
        "fsync",
        "event_loop",
        "shard_transport",
        "responder",
        "log_format",
        "log_level",
        mode="before",
    )
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("model_capabilities")
    @classmethod
    def _caps(cls, value: str | None) -> str | None:
        parse_caps(value)  # raises ValueError saying what is wrong
        return value

    @field_validator("image_base_url")
    @classmethod
    def _image_base(cls, value: str | None) -> str | None:
        return None if value is None else check_base_url(value)

    def attachments(self, blobs: BlobReader | None) -> Attachments:
        """How attachments reach the models (``actors.model_parts``), bytes from ``blobs``."""
        default = ModelCaps(text_tokens=self.attachment_text_tokens)
        return Attachments(
            blobs=blobs,
            table=parse_caps(self.model_capabilities, default),
            default=default,
            image_base_url=self.image_base_url,
            pdf_text=pdf_text,
        )

    @field_validator("openai_base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_base_url(value)

    @field_validator("access_log", mode="before")
    @classmethod
    def _access_log(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            if value not in ("on", "off") and not _SAMPLE.fullmatch(value):
                raise ValueError("must be on, off or sample:N with N >= 1 (like sample:100)")
        return value

    def authenticates(self) -> bool:
        """Whether requests must carry a token (a tokens file or a JWT key is set)."""
        return any(
            v is not None
            for v in (self.tokens_file, self.jwt_jwks_url, self.jwt_secret, self.jwt_public_key)
        )

    def access_log_every(self) -> int:
        """Log 1 request in this many (1 = every one, 0 = none)."""
        if self.access_log == "off":
            return 0
        if self.access_log == "on":
            return 1
        return int(self.access_log.split(":", 1)[1])

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
            on_busy=self.on_busy,
            tool_timeout=self.tool_timeout,
            model_context=context_sizes(self.model_context),
            reply_reserve=self.reply_reserve,
            compact_at=self.compact_at,
            session_ttl=self.session_ttl,
            temporary_ttl=self.temporary_ttl,
            sweep_interval=self.sweep_interval,
        )


_SAMPLE = re.compile(r"sample:0*[1-9][0-9]{0,8}")


def context_sizes(text: str) -> dict[str, int]:
    """``--model-context``'s JSON object as ``{model: tokens}``, with ``"*"`` (8192 unless
    given); raises ValueError naming what is wrong."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(
            f'must be a JSON object like {{"gpt-4o": 128000, "*": 8192}} ({exc})'
        ) from None
    if not isinstance(value, dict):
        raise ValueError('must be a JSON object like {"gpt-4o": 128000, "*": 8192}')
    for model, size in value.items():
        if not isinstance(size, int) or isinstance(size, bool) or not 64 <= size <= 100_000_000:
            raise ValueError(f"the context size of {model!r} must be an integer 64..100000000")
    return {"*": 8192, **value}


def check_base_url(url: str) -> str:
    """``url`` without a trailing slash; raises ValueError unless it is http(s) with a host."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a URL ({exc})") from exc
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r} needs http:// or https:// (like https://api.openai.com/v1)")
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host (like https://api.openai.com/v1)")
    return url.rstrip("/")


def setting_source(name: str, overrides: dict[str, Any]) -> str:
    """How a user names setting ``name``: its flag, or its variable if that set it."""
    flag = "--" + name.replace("_", "-")
    if overrides.get(name) is not None:
        return flag
    return f"{flag} (from ROOST_{name.upper()})"


def settings_from(
    overrides: dict[str, Any], environ: os._Environ[str] | dict[str, str] | None = None
) -> Settings:
    """Settings from explicit ``overrides`` (None = not given) over ``ROOST_*`` vars.

    The API key falls back to ``OPENAI_API_KEY`` (what every OpenAI client reads)
    when neither ``--openai-api-key`` nor ``ROOST_OPENAI_API_KEY`` is given.
    Raises pydantic's ``ValidationError`` for a bad value.
    """
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
    if values.get("openai_api_key") is None and env.get("OPENAI_API_KEY"):
        values["openai_api_key"] = env["OPENAI_API_KEY"]
    return Settings.model_validate(values, strict=False)
