"""``tenure-agent``: what a field technician and encoder scripts type.

Exit codes: 0 done; 1 an error (one line on stderr, never a traceback); 2 a usage or
configuration error, or a mistyped code; 3 the agent service is not running (``status``,
``lease``, ``release``); 4 (``status``) the service runs but a broker is unreachable.
``status`` exits 0 only when all is well, so that a monitoring check can rely on it: 1
when something needs a person (not enrolled, a binding the broker no longer knows, an
encoder's lease ``lost``, ``revoked`` or ``denied``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NoReturn

from agent.config import Config, load_config
from agent.errors import AgentError, ConfigError
from shared import __version__, logs, words

if TYPE_CHECKING:
    import argparse

    from agent.encoder_client import EncoderClient, LeaseStatus

# Each command imports what it needs when it runs: the long-running `run` then holds
# neither the encoder client nor enrolment in memory (docs/agent.md, "Footprint").

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_BROKER_UNREACHABLE = 0, 1, 2, 3, 4


class _Exit(Exception):
    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _parser() -> argparse.ArgumentParser:
    import argparse  # not for `run` as its unit starts it: see _plain_run

    class _Parser(argparse.ArgumentParser):
        """argparse, but a usage error is one line and exit code 2."""

        def error(self, message: str) -> NoReturn:
            raise _Exit(EXIT_USAGE, f"{message} (see {self.prog} --help)")

    common = _Parser(add_help=False)
    common.add_argument(
        "--config", type=Path, metavar="FILE", help="settings file (default /etc/tenure-agent/agent.toml)"
    )
    common.add_argument("--state-dir", metavar="DIR", help="state directory (default /var/lib/tenure-agent)")
    common.add_argument("--socket", metavar="PATH", help="local API socket (default /run/tenure-agent/agent.sock)")

    parser = _Parser(prog="tenure-agent", description="Holds licence leases for this host's encoders.")
    parser.add_argument("--version", action="version", version=f"tenure-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "enroll",
        parents=[common],
        help="bind this host (or a domain) to a pool",
        description="Redeem an 8-digit authentication code from the console.",
    )
    p.add_argument("code", nargs="+", metavar="CODE", help="the code, e.g. 4821 3907")
    p.add_argument("--broker", metavar="URL", help="the broker's https:// URL")
    p.add_argument("--name", help="this server's name (default: the host name)")
    p.add_argument("--domain", metavar="DOMAIN", help="enrol a domain binding named DOMAIN")
    p.add_argument("--force", action="store_true", help="replace an existing binding")

    sub.add_parser(
        "run",
        parents=[common],
        help="run the service",
        description="Serve the local API and keep the encoders' leases.",
    )

    p = sub.add_parser("status", parents=[common], help="bindings, broker and leases")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("lease", parents=[common], help="ask for an encoder's lease")
    p.add_argument("encoder", metavar="ENCODER", help="the encoder's serial")
    p.add_argument(
        "--type", required=True, dest="licence_type", metavar="TYPE", help="licence type, e.g. one-in-one-out"
    )
    p.add_argument("--count", required=True, type=int, metavar="N", help="licences wanted")
    p.add_argument("--domain", metavar="DOMAIN", help="take them from this domain's pool")
    p.add_argument(
        "--kind",
        choices=("hardware", "container"),
        dest="encoder_kind",
        help="the encoder's kind, for the pool's soft-lock window (the broker assumes hardware)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the broker's answer (default 30)",
    )

    p = sub.add_parser("release", parents=[common], help="give an encoder's lease back")
    p.add_argument("encoder", metavar="ENCODER", help="the encoder's serial")
    p.add_argument(
        "--wait", type=float, default=10.0, metavar="SECONDS", help="how long to wait for the broker (default 10)"
    )
    return parser


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


def _config(args: argparse.Namespace | SimpleNamespace, **extra: Any) -> Config:
    return load_config(
        args.config,
        overrides={"state_dir": args.state_dir, "socket": args.socket, **extra},
    )


def _out(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------------- enroll


def cmd_enroll(args: argparse.Namespace) -> int:
    from agent.client import split_api_path
    from agent.enroll import CodeFormatError, enroll, normalise_code

    try:
        code = normalise_code(args.code)
    except CodeFormatError as exc:
        raise _Exit(EXIT_USAGE, str(exc)) from exc
    config = _config(args, broker_url=args.broker)
    if config.broker_url is None:
        raise _Exit(
            EXIT_USAGE,
            "no broker URL: pass --broker URL, or set broker_url in the config file",
        )
    url, dropped = split_api_path(config.broker_url)
    if dropped:
        print(f'note: using the broker\'s address {url} (without "{dropped}")', file=sys.stderr, flush=True)
    name = args.name or socket.gethostname()
    try:
        done = asyncio.run(enroll(config, code, broker_url=url, name=name, domain=args.domain, force=args.force))
    except CodeFormatError as exc:
        raise _Exit(EXIT_USAGE, str(exc)) from exc
    binding = done.binding
    kind = "server" if binding.kind == "server" else "domain"
    where = f'pool "{binding.pool_name}" of estate "{binding.estate_name}"'
    _out(f'Enrolled {kind} "{binding.name}" in {where}{done.handed_back}.')
    return EXIT_OK


# ---------------------------------------------------------------------------- run


def _setup_logging(level: str, log_format: str) -> None:
    logs.setup(level, log_format, text="%(levelname)s %(message)s")
    logs.quiet_malformed_requests()
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def cmd_run(args: argparse.Namespace | SimpleNamespace) -> int:
    from agent.daemon import serve

    config = _config(args)
    _setup_logging(config.log_level, config.log_format)
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        raise _Exit(EXIT_ERROR, str(exc)) from exc
    return EXIT_OK


# ---------------------------------------------------------------------------- status


def _binding_line(b: dict[str, Any]) -> str:
    line = f'{b["kind"]} "{b["name"]}" in pool "{b["pool_name"]}" of estate "{b["estate_name"]}"'
    where = f"broker {b['broker_url']}"
    if "broker" in b:
        where += f": {b['broker']}"
        if b.get("broker_error"):
            where += f" ({b['broker_error']})"
    return f"{line} ({where})"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _encoder_rows(encoders: list[dict[str, Any]]) -> list[str]:
    rows = [["ENCODER", "DOMAIN", "TYPE", "COUNT", "STATE", "EXPIRES", "NOTE"]]
    for e in encoders:
        wanted = e.get("wanted") or {}
        lease = e.get("lease") or {}
        count = str(lease.get("count", "-"))
        if wanted and lease and lease.get("count") != wanted.get("count"):
            count += f" (wants {wanted['count']})"
        rows.append(
            [
                e["encoder"],
                wanted.get("domain") or "-",
                lease.get("licence_type") or wanted.get("licence_type") or "-",
                count,
                e["state"],
                lease.get("expires_at") or "-",
                (e.get("error") or {}).get("code") or "",
            ]
        )
    return _table(rows)


def _encoder_client(config: Config) -> EncoderClient:
    from agent.encoder_client import EncoderClient

    return EncoderClient(config.socket)


def cmd_status(args: argparse.Namespace) -> int:
    from agent.bindings import load_bindings
    from agent.encoder_client import AgentNotRunning

    config = _config(args)
    client = _encoder_client(config)
    try:
        status = client.status(probe=True)
    except AgentNotRunning as exc:
        bindings = [b.public_view() for b in load_bindings(config.state_dir).all()]
        if args.json:
            _out(json.dumps({"running": False, "bindings": bindings}, indent=2))
        else:
            _out(f"The agent service is not running (no socket at {config.socket}).")
            _bindings_summary(bindings)
        raise _Exit(EXIT_NOT_RUNNING) from exc
    if args.json:
        _out(json.dumps({"running": True, **status}, indent=2))
    else:
        agent = status["agent"]
        _out(f"The agent service is running (pid {agent['pid']}, socket {agent['socket']}).")
        _bindings_summary(status["bindings"])
        if status["encoders"]:
            for line in _encoder_rows(status["encoders"]):
                _out(line)
        else:
            _out("No encoder has asked for a lease.")
    trouble = _unreachable(status) or _attention(status)
    if trouble is not None:
        raise _Exit(*trouble)
    return EXIT_OK


# Encoder states that need a person; ``pending`` is the agent still asking.
NEEDS_ATTENTION = ("lost", "revoked", "denied")


def _unreachable(status: dict[str, Any]) -> tuple[int, str] | None:
    """Exit 4 and why, when a broker does not answer."""
    away = {b["broker_url"]: b.get("broker_error") for b in status["bindings"] if b.get("broker") == "unreachable"}
    if not away:
        return None
    url, reason = next(iter(away.items()))
    offline = sum(1 for e in status["encoders"] if e["state"] == "offline")
    others = len(away) - 1
    more = f" (and {others} other broker{'' if others == 1 else 's'})" if others else ""
    served = {0: "no lease is held", 1: "1 lease is served offline until it expires"}.get(
        offline, f"{offline} leases are served offline until they expire"
    )
    return EXIT_BROKER_UNREACHABLE, f"cannot reach the broker at {url}{more}: {reason or 'no answer'}; {served}"


def _attention(status: dict[str, Any]) -> tuple[int, str] | None:
    """Exit 1 and what needs a person, when anything does."""
    if not status["bindings"]:
        return EXIT_ERROR, "this host is not enrolled"
    problems = [f'{b["kind"]} "{b["name"]}" removed' for b in status["bindings"] if b.get("broker") == "removed"]
    problems += [f"encoder {e['encoder']} {e['state']}" for e in status["encoders"] if e["state"] in NEEDS_ATTENTION]
    if not problems:
        return None
    return EXIT_ERROR, f"needs attention: {', '.join(problems)}"


def _bindings_summary(bindings: list[dict[str, Any]]) -> None:
    if not bindings:
        _out("Not enrolled: run tenure-agent enroll CODE --broker URL.")
    for b in bindings:
        _out(f"Bound: {_binding_line(b)}.")


# ---------------------------------------------------------------------------- lease / release


def _plural(n: int, licence_type: str) -> str:
    return words.count(n, f"{licence_type} licence")


def _why(lease: LeaseStatus, wanted: int, licence_type: str) -> str:
    code = lease.error_code or "unknown"
    error = lease.raw.get("error", {})
    available = error.get("available")
    if code == "pool_exhausted":
        more = f" ({available} available)" if isinstance(available, int) else ""
        locked, reserved = error.get("soft_locked"), error.get("reserved")
        if isinstance(locked, int) and locked:
            more += f"; {words.count(locked, 'seat')} soft-locked for other encoders"
        if isinstance(reserved, int) and reserved:
            more += f"; {words.count(reserved, 'seat')} reserved for other servers"
        return f"the pool cannot cover {_plural(wanted, licence_type)}{more}"
    if code == "server_limit":
        cap = error.get("max")
        return f"this server may hold at most {_plural(cap, licence_type)}" if isinstance(cap, int) else code
    if code == "no_valid_licences":
        return f"the pool holds no valid {licence_type} licences"
    if code == "licence_type_not_in_pool":
        types = lease.raw.get("error", {}).get("types") or []
        held = f"it holds only {', '.join(types)}" if types else "it holds no licences at all"
        return f"the pool has no {licence_type} licences ({held}); check the licence type"
    detail = lease.error_detail or ""
    return detail if code in ("not_enrolled", "broker_unavailable") else f"{code}: {detail}".rstrip(": ")


def cmd_lease(args: argparse.Namespace) -> int:
    config = _config(args)
    client = _encoder_client(config)
    lease = client.acquire(
        args.encoder,
        args.licence_type,
        args.count,
        domain=args.domain,
        encoder_kind=args.encoder_kind,
        wait=args.wait,
    )
    if lease.usable:
        line = (
            f"Encoder {lease.encoder} holds {_plural(lease.count, lease.licence_type or '')} until {lease.expires_at}"
        )
        if lease.count == args.count and lease.licence_type == args.licence_type:
            note = (
                " (the broker is unreachable; the lease stays valid until then)" if (lease.state == "offline") else ""
            )
            _out(line + note + ".")
            return EXIT_OK
        _out(line + ".")
        raise _Exit(
            EXIT_ERROR,
            f"encoder {args.encoder} was denied "
            f"{_plural(args.count, args.licence_type)}: "
            f"{_why(lease, args.count, args.licence_type)}",
        )
    if lease.state == "pending":
        raise _Exit(
            EXIT_ERROR,
            f"encoder {args.encoder} has no lease yet: "
            f"{_why(lease, args.count, args.licence_type) or 'no answer from the broker'}; "
            "the agent keeps trying",
        )
    raise _Exit(
        EXIT_ERROR,
        f"encoder {args.encoder} was denied "
        f"{_plural(args.count, args.licence_type)}: "
        f"{_why(lease, args.count, args.licence_type)}",
    )


def cmd_release(args: argparse.Namespace) -> int:
    config = _config(args)
    client = _encoder_client(config)
    state = client.release(args.encoder, wait=args.wait)
    if state == "none":
        raise _Exit(EXIT_ERROR, f"encoder {args.encoder} has no lease on this agent")
    if state == "released":
        _out(f"Released the lease of encoder {args.encoder}.")
    else:
        _out(
            f"Encoder {args.encoder} no longer wants a lease; the broker is unreachable, "
            "so the agent keeps trying to release it until it expires."
        )
    return EXIT_OK


COMMANDS = {
    "enroll": cmd_enroll,
    "run": cmd_run,
    "status": cmd_status,
    "lease": cmd_lease,
    "release": cmd_release,
}


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
        args = _parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except _Exit as exc:
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
