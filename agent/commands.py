"""``tenure-agent``'s commands other than the service's own ``run``: ``enroll``,
``status``, ``lease`` and ``release``, and the argparse reading of every command line
but a plain ``run``.

Apart from ``agent/cli.py`` so that the service, which runs for months, never loads them
(docs/agent.md, "Footprint"); ``agent/cli.py`` imports this module for any other
command line. Each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from agent.config import Config, load_config
from agent.errors import (
    EXIT_BROKER_UNREACHABLE,
    EXIT_ERROR,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_USAGE,
    CommandExit,
)
from shared import __version__, words

if TYPE_CHECKING:
    from agent.encoder_client import EncoderClient, LeaseStatus


def _parser() -> argparse.ArgumentParser:
    class _Parser(argparse.ArgumentParser):
        """argparse, but a usage error is one line and exit code 2."""

        def error(self, message: str) -> NoReturn:
            raise CommandExit(EXIT_USAGE, f"{message} (see {self.prog} --help)")

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


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Any command line (``None``: this process's), as argparse reads it."""
    return _parser().parse_args(argv)


def _config(args: argparse.Namespace, **extra: Any) -> Config:
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
        raise CommandExit(EXIT_USAGE, str(exc)) from exc
    config = _config(args, broker_url=args.broker)
    if config.broker_url is None:
        raise CommandExit(
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
        raise CommandExit(EXIT_USAGE, str(exc)) from exc
    binding = done.binding
    kind = "server" if binding.kind == "server" else "domain"
    where = f'pool "{binding.pool_name}" of estate "{binding.estate_name}"'
    _out(f'Enrolled {kind} "{binding.name}" in {where}{done.handed_back}.')
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
        raise CommandExit(EXIT_NOT_RUNNING) from exc
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
        raise CommandExit(*trouble)
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
        raise CommandExit(
            EXIT_ERROR,
            f"encoder {args.encoder} was denied "
            f"{_plural(args.count, args.licence_type)}: "
            f"{_why(lease, args.count, args.licence_type)}",
        )
    if lease.state == "pending":
        raise CommandExit(
            EXIT_ERROR,
            f"encoder {args.encoder} has no lease yet: "
            f"{_why(lease, args.count, args.licence_type) or 'no answer from the broker'}; "
            "the agent keeps trying",
        )
    raise CommandExit(
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
        raise CommandExit(EXIT_ERROR, f"encoder {args.encoder} has no lease on this agent")
    if state == "released":
        _out(f"Released the lease of encoder {args.encoder}.")
    else:
        _out(
            f"Encoder {args.encoder} no longer wants a lease; the broker is unreachable, "
            "so the agent keeps trying to release it until it expires."
        )
    return EXIT_OK


# `run` is agent/cli.py's.
COMMANDS = {
    "enroll": cmd_enroll,
    "status": cmd_status,
    "lease": cmd_lease,
    "release": cmd_release,
}
