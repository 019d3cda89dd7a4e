"""``roost``: the command line. ``roost serve`` starts the server."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import socket
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from server.listen import fd_budget, serve
from server.settings import Settings, settings_from
from storage.layout import raise_nofile_limit

# young-generation GC threshold of the server process (Python's default is 700)
GC_THRESHOLD_0 = 20_000


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roost", description="Roost chat-session server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the server",
        description="Run the server. Every flag also reads ROOST_<FLAG> from the environment.",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool or name == "insecure":
            serve.add_argument(flag, action="store_true", default=None, help=field.description)
        else:
            serve.add_argument(
                flag,
                dest=name,
                default=None,
                help=f"{field.description} (default {field.default!r}; env ROOST_{name.upper()})",
            )
    return parser


def request_line_limit(settings: Settings) -> int:
    """The longest request line the server reads (aiohttp's default is 8190 bytes).

    A search query of ``max_search_chars`` characters, each 4 UTF-8 bytes
    percent-encoded (12 bytes), must fit with room for the path and the other
    query parameters; a longer line is refused by the HTTP parser itself.
    """
    return max(8190, 12 * settings.max_search_chars + 8190)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = settings_from(overrides)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = ".".join(str(p) for p in err["loc"])
            print(f"roost: bad setting {loc}: {err['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log = logging.getLogger("roost")
    if settings.tokens_file is None:
        if not _is_loopback(settings.host) and not settings.insecure:
            print(
                f"roost: refusing to bind {settings.host} without tokens: anyone who can reach "
                "it could read every session. Use --tokens-file, or --insecure if you mean it.",
                file=sys.stderr,
            )
            return 2
        log.info(
            "no tokens configured: serving loopback only%s",
            " (--insecure: NOT loopback)" if not _is_loopback(settings.host) else "",
        )
    from server.app import make_app
    from server.auth import TokensError

    try:
        app = make_app(settings)
    except TokensError as exc:
        print(f"roost: {exc}", file=sys.stderr)
        return 2
    # The objects made so far (modules, the app) live for the whole run: keep them
    # out of every collection, and collect the young generation less often (the
    # default, every 700 allocations, runs several times per request).
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD_0, 20, 20)
    log.info(
        "roost serving http://%s:%s data dir %s synchronous=%s",
        settings.host,
        settings.port,
        settings.data_dir,
        settings.synchronous,
    )
    budget = fd_budget(raise_nofile_limit()[0], settings.max_live_actors)
    asyncio.run(
        serve(
            app,
            settings.host,
            settings.port,
            connections=budget.connections,
            keepalive_timeout=settings.keepalive_timeout,
            max_line_size=request_line_limit(settings),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
