"""``roost``: the command line. ``roost serve`` starts the server.

Exit codes: 0 after a clean stop; 2 for a bad command line or setting (a
value, the tokens file, a public bind without tokens); 1 when the server
cannot start where it was asked to (the data dir, its catalog, the port).
Each failure is one ``roost: ...`` line on stderr saying what was expected,
what was found and what to do; nothing says "serving" before it.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import ipaddress
import logging
import socket
import sqlite3
import sys
from collections.abc import Sequence
from typing import Literal, get_args, get_origin

from aiohttp import web
from pydantic import ValidationError

from actors.process import raise_nofile_limit
from actors.registry import DataDirLock, claim_data_dir
from server.listen import SHUTDOWN_MARGIN, fd_budget, serve
from server.logs import setup_logging
from server.loops import LoopError, loop_factory, loop_name
from server.settings import Settings, setting_source, settings_from
from storage.errors import StorageError
from storage.layout import DataDirError

# young-generation GC threshold of the server process (Python's default is 700)
GC_THRESHOLD_0 = 20_000
EXIT_USAGE = 2
EXIT_CANNOT_START = 1
LISTEN_BACKLOG = 128  # aiohttp's own default

log = logging.getLogger("roost")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(
                ipaddress.ip_address(info[4][0]).is_loopback
                for info in socket.getaddrinfo(host, None)
            )
        except OSError:
            return False


def _choices(name: str) -> list[str] | None:
    """The allowed values of a ``Literal`` setting, else None."""
    annotation = Settings.model_fields[name].annotation
    if get_origin(annotation) is Literal:
        return [str(a) for a in get_args(annotation)]
    return None


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(prog="roost", description="Roost chat-session server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the server",
        usage="%(prog)s [--flag VALUE ...]  (roost serve --help lists every flag)",
        description="Run the server. Every flag also reads ROOST_<FLAG> from the environment;"
        " choices are case-insensitive. The openai responder's key also comes from"
        " OPENAI_API_KEY.",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool or name == "insecure":
            serve.add_argument(flag, action="store_true", default=None, help=field.description)
            continue
        choices = _choices(name)
        if choices is not None:
            upper = all(c.isupper() for c in choices)
            serve.add_argument(
                flag,
                dest=name,
                default=None,
                choices=choices,
                type=str.upper if upper else str.lower,
                help=f"{field.description} (default {field.default}; env ROOST_{name.upper()})",
            )
        else:
            serve.add_argument(
                flag,
                dest=name,
                default=None,
                help=f"{field.description} (default {field.default!r}; env ROOST_{name.upper()})",
            )
    return parser, serve


def build_parser() -> argparse.ArgumentParser:
    """The ``roost`` argument parser."""
    return _parsers()[0]


def request_line_limit(settings: Settings) -> int:
    """The longest request line the server reads (aiohttp's default is 8190 bytes).

    A search query of ``max_search_chars`` characters, each 4 UTF-8 bytes
    percent-encoded (12 bytes), must fit with room for the path and the other
    query parameters; a longer line is refused by the HTTP parser itself.
    """
    return max(8190, 12 * settings.max_search_chars + 8190)


def fail(message: str, code: int) -> int:
    """Print the one ``roost: ...`` line of a failed start; returns ``code``."""
    print(f"roost: {message}", file=sys.stderr)
    return code


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Listening TCP sockets for every address of ``host`` (none accepted yet).

    Connections made before the server starts wait in the kernel's backlog, so
    the "serving" line is true as soon as it is written. Raises OSError (its
    ``strerror`` is one line) when an address cannot be bound; nothing stays open.
    """
    infos = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )
    socks: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, addr in infos:
            if (family, addr[0]) in seen:
                continue
            seen.add((family, addr[0]))
            s = socket.socket(family, kind, proto)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # every address of one server shares the port the first one got
            s.bind((addr[0], socks[0].getsockname()[1] if port == 0 else port, *addr[2:]))
            s.listen(LISTEN_BACKLOG)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


def _bind_failure(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {host}:{port}: the port is already in use (another server?); "
            "stop that one or pass another --port"
        )
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {host}:{port}: permission denied (ports below 1024 need "
            "privileges); pass another --port"
        )
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {host}: no such address ({exc.strerror}); check --host"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host and --port"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``roost``; returns the exit code (see the module docstring)."""
    root, serve = _parsers()
    args, unknown = root.parse_known_args(argv)
    if unknown:
        serve.error(f"unrecognized arguments: {' '.join(unknown)}")
    overrides = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = settings_from(overrides)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = err["loc"]
            what = setting_source(str(loc[0]), overrides) if loc else "settings"
            print(f"roost: bad value for {what}: {err['msg']}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(settings.log_level, settings.log_format)
    if not settings.authenticates() and not _is_loopback(settings.host) and not settings.insecure:
        return fail(
            f"refusing to bind {settings.host} without tokens: anyone who can reach "
            "it could read every session. Use --tokens-file or a --jwt-* key, or --insecure "
            "if you mean it.",
            EXIT_USAGE,
        )
    from server.app import make_app
    from server.tokens import TokensError

    try:
        app = make_app(settings)
    except TokensError as exc:
        return fail(str(exc), EXIT_USAGE)
    if settings.cluster is not None:
        # a front is stateless: no data dir of its own to lock; join the cluster now,
        # so that a wrong one (or another --shards) stops it before it listens
        from actors.cluster.front import ClusterError, connect

        try:
            connect(
                settings.cluster, settings.cluster_name, settings.shards, settings.request_timeout
            )
        except ClusterError as exc:
            return fail(exc.message, EXIT_CANNOT_START)
        return _run(app, settings, None)
    try:
        lock = claim_data_dir(settings.data_dir)
    except DataDirError as exc:
        return fail(exc.message, EXIT_CANNOT_START)
    try:
        return _run(app, settings, lock)
    finally:
        lock.release()


def _run(app: web.Application, settings: Settings, lock: DataDirLock | None) -> int:
    try:
        factory = loop_factory(settings.event_loop, cluster=settings.cluster is not None)
    except LoopError as exc:
        return fail(str(exc), EXIT_CANNOT_START)
    try:
        socks = bind_sockets(settings.host, settings.port)
    except OSError as exc:
        return fail(_bind_failure(settings.host, settings.port, exc), EXIT_CANNOT_START)
    port = socks[0].getsockname()[1]
    host = f"[{settings.host}]" if ":" in settings.host else settings.host

    async def announce(app: web.Application) -> None:
        # runs after every resource of the app opened (on_startup order)
        if not settings.authenticates():
            log.info(
                "no tokens configured: only loopback clients, one user, no rate limits%s",
                " (--insecure: NOT loopback)" if not _is_loopback(settings.host) else "",
            )
        else:
            log.info(
                "tokens mode: every request needs a token (%s)",
                ", ".join(
                    what
                    for what, on in (
                        (f"tokens file {settings.tokens_file}", settings.tokens_file),
                        (f"JWKS {settings.jwt_jwks_url}", settings.jwt_jwks_url),
                        ("JWT secret", settings.jwt_secret),
                        (f"JWT public key {settings.jwt_public_key}", settings.jwt_public_key),
                    )
                    if on
                ),
            )
        if settings.responder == "openai" and not settings.openai_api_key:
            log.warning(
                "the openai responder has no API key (--openai-api-key or OPENAI_API_KEY): "
                "a provider that needs one will refuse every reply"
            )
        log.info(
            "serving http://%s:%s data dir %s synchronous=%s responder=%s loop=%s",
            host,
            port,
            settings.data_dir if lock is None else lock.path.parent,
            settings.synchronous,
            settings.responder,
            loop_name(asyncio.get_running_loop()),
        )

    async def farewell(app: web.Application) -> None:
        log.info("shutting down: closing streams, finishing replies, flushing sessions")

    app.on_startup.append(announce)
    app.on_shutdown.insert(0, farewell)
    # The objects made so far (modules, the app) live for the whole run: keep them
    # out of every collection, and collect the young generation less often (the
    # default, every 700 allocations, runs several times per request).
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD_0, 20, 20)
    budget = fd_budget(raise_nofile_limit()[0], settings.max_live_actors)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(
                serve(
                    app,
                    socks,
                    connections=budget.connections,
                    keepalive_timeout=settings.keepalive_timeout,
                    max_line_size=request_line_limit(settings),
                    shutdown_timeout=settings.shutdown_grace + SHUTDOWN_MARGIN,
                )
            )
    except (StorageError, sqlite3.Error, OSError) as exc:
        message = exc.message if isinstance(exc, StorageError) else str(exc)
        return fail(f"cannot start on data dir {settings.data_dir}: {message}", EXIT_CANNOT_START)
    finally:
        for s in socks:
            s.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
