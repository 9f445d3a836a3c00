"""``tenure-agent``: what a field technician and encoder scripts type.

Exit codes: 0 done; 1 an error (one line on stderr, never a traceback); 2 a usage or
configuration error, or a mistyped code; 3 the agent service is not running (``status``,
``lease``, ``release``); 4 (``status``) the service runs but a broker is unreachable.
``status`` exits 0 only when all is well, so that a monitoring check can rely on it: 1
when something needs a person (not enrolled, a binding the broker no longer knows, an
encoder's lease ``lost``, ``revoked`` or ``denied``).

This module is what the service loads: the command line as its unit gives it (read
without argparse) and ``run``. Every other command, and argparse, are in
``agent/commands.py``, imported only for them: the service, which runs for months, then
holds none of their code (docs/agent.md, "Footprint").
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from agent.config import Config, load_config
from agent.errors import (
    EXIT_ERROR,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_USAGE,
    AgentError,
    CommandExit,
    ConfigError,
)
from shared import logs

if TYPE_CHECKING:
    import argparse

# `run`'s own options, and where argparse puts them.
RUN_OPTIONS = {"--config": "config", "--state-dir": "state_dir", "--socket": "socket"}


def _plain_run(argv: Sequence[str]) -> SimpleNamespace | None:
    """``run`` and its options as argparse would read them, or None for anything that
    is not that simply (help, abbreviations, a value like an option, any mistake), which
    argparse then reads and explains.

    The service runs for months: read here, its command line spares it argparse and
    gettext for all that time, 0.4 MB resident (docs/agent.md, "Footprint").
    """
    if not argv or argv[0] != "run":
        return None
    found: dict[str, str] = {}
    rest = list(argv[1:])
    while rest:
        name, equals, value = rest.pop(0).partition("=")
        if name not in RUN_OPTIONS:
            return None
        if not equals:
            if not rest or rest[0].startswith("-"):
                return None
            value = rest.pop(0)
        found[RUN_OPTIONS[name]] = value
    config = found.get("config")
    return SimpleNamespace(
        command="run",
        config=Path(config) if config is not None else None,
        state_dir=found.get("state_dir"),
        socket=found.get("socket"),
    )


# ---------------------------------------------------------------------------- run


def _setup_logging(level: str, log_format: str) -> None:
    logs.setup(level, log_format, text="%(levelname)s %(message)s")
    logs.quiet_malformed_requests()
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


# What reading the settings imports and the service never uses again.
READ_ONCE = ("tomllib",)


def _load_config(args: argparse.Namespace | SimpleNamespace) -> Config:
    """The service's settings. TOML is read once, at start: the modules that read it
    (``READ_ONCE``, about 150 KB of Python objects), if this reading imported them, are
    let go afterwards, their memory then reused by the service (docs/agent.md,
    "Footprint"). Nothing of the agent holds them: each imports ``tomllib`` inside the
    function that reads; a later import would load them afresh."""
    before = set(sys.modules)
    config = load_config(args.config, overrides={"state_dir": args.state_dir, "socket": args.socket})
    for name in set(sys.modules) - before:
        if name in READ_ONCE or name.startswith(tuple(f"{m}." for m in READ_ONCE)):
            del sys.modules[name]
    return config


def cmd_run(args: argparse.Namespace | SimpleNamespace) -> int:
    from agent.daemon import serve

    config = _load_config(args)
    _setup_logging(config.log_level, config.log_format)
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        raise CommandExit(EXIT_ERROR, str(exc)) from exc
    return EXIT_OK


def _client_error(exc: Exception) -> int | None:
    """The exit code for an encoder-client error (None if ``exc`` is not one)."""
    client = sys.modules.get("agent.encoder_client")  # imported if a command used it
    if client is None or not isinstance(exc, client.EncoderClientError):
        return None
    if isinstance(exc, client.AgentNotRunning):
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_NOT_RUNNING
    if isinstance(exc, client.AgentRefused):
        print(f"error: {exc.detail or exc.code}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    print(f"error: {exc}", file=sys.stderr, flush=True)
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (the console script exits with it)."""
    try:
        plain = _plain_run(sys.argv[1:] if argv is None else argv)
        if plain is not None:
            return cmd_run(plain)
        from agent.commands import COMMANDS, parse

        args = parse(argv)
        return cmd_run(args) if args.command == "run" else COMMANDS[args.command](args)
    except CommandExit as exc:
        if exc.message:
            print(f"error: {exc.message}", file=sys.stderr, flush=True)
        return exc.code
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        code = _client_error(exc)
        if code is None:
            raise
        return code


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
