"""``tenure-broker``: serve the broker, rotate its signing keys, back it up and restore it,
check its books, and copy an SQLite broker into PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import shutil
import socket
import ssl
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from broker import config as configuration
from broker import figures, secretfiles, signing
from broker.errors import StorageUnavailable
from broker.secretkey import SecretKeyError
from broker.store.base import SchemaTooNew
from shared import __version__, jws, logs
from shared.sdnotify import Notifier
from shared.secretfile import folder_owner
from shared.words import count

if TYPE_CHECKING:
    from broker import books


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tenure-broker", description="Tenure licence broker")
    parser.add_argument("--version", action="version", version=f"tenure-broker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the broker")
    serve.add_argument("--config", type=Path, help="TOML config file")
    serve.add_argument("--data-dir", help="data directory (default ./tenure-data)")
    serve.add_argument("--database", help="PostgreSQL URL shared by replicas (default: SQLite in the data directory)")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", help="listen port (default 8400)")
    serve.add_argument("--tls-cert", help="PEM certificate chain (serve HTTPS)")
    serve.add_argument("--tls-key", help="PEM private key for --tls-cert")
    serve.add_argument(
        "--workers", help="broker processes on the one address: N (1-64) or auto (the default: the fastest measured)"
    )
    keys = sub.add_parser("keys", help="manage lease-signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    rotate = keys_sub.add_parser("rotate", help="add a new signing key (used within a minute)")
    rotate.add_argument("--config", type=Path, help="TOML config file")
    rotate.add_argument("--data-dir", help="data directory (default ./tenure-data)")
    rotate.add_argument("--database", help="the replicas' PostgreSQL URL (rotates for every replica)")
    backup = sub.add_parser("backup", help="copy a running broker's database, consistently, into FILE")
    backup.add_argument("file", type=Path, help="the new backup file (written mode 0600)")
    backup.add_argument("--config", type=Path, help="TOML config file")
    backup.add_argument("--data-dir", help="data directory (default ./tenure-data)")
    restore = sub.add_parser("restore", help="make a new data directory from a backup FILE")
    restore.add_argument("file", type=Path, help="a file written by 'tenure-broker backup'")
    restore.add_argument("--config", type=Path, help="TOML config file")
    restore.add_argument("--data-dir", required=True, help="the new data directory (must be empty)")
    check = sub.add_parser(
        "check", help="recompute every invariant and each estate's audit chain from the rows (safe while serving)"
    )
    check.add_argument("--config", type=Path, help="TOML config file")
    check.add_argument("--data-dir", help="data directory (default ./tenure-data)")
    check.add_argument("--database", help="the replicas' PostgreSQL URL (default: SQLite in the data directory)")
    copy = sub.add_parser(
        "copy-store", help="copy a stopped SQLite broker's whole state into an empty PostgreSQL database, verified"
    )
    copy.add_argument("--to", required=True, metavar="URL", help="the empty PostgreSQL database: postgresql://…/DB")
    copy.add_argument("--config", type=Path, help="the SQLite broker's TOML config file")
    copy.add_argument("--data-dir", help="the SQLite broker's data directory (default ./tenure-data)")
    return parser


def _load(args: argparse.Namespace) -> configuration.Config:
    names = ("data_dir", "database", "host", "port", "tls_cert", "tls_key", "workers")
    flags = {k: getattr(args, k, None) for k in names}
    return configuration.load(args.config, flags=flags)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "copy-store":
            # The source is always the data directory's SQLite database; --to names the target.
            env = {k: v for k, v in os.environ.items() if k != "TENURE_DATABASE_URL"}
            cfg = configuration.load(args.config, env=env, flags={"data_dir": args.data_dir}, database=None)
        else:
            cfg = _load(args)
    except configuration.ConfigError as exc:
        print(f"tenure-broker: {exc}", file=sys.stderr)
        return 2
    logs.setup(cfg.log_level, cfg.log_format)
    logs.quiet_malformed_requests()
    if args.command == "keys":
        return _rotate(cfg)
    if args.command in ("backup", "restore"):
        return _copy(args.command, args.file, cfg)
    if args.command == "check":
        return _check(cfg)
    if args.command == "copy-store":
        return _copy_store(cfg, args.to)
    return serve(cfg)


def _rotate(cfg: configuration.Config) -> int:
    """``keys rotate``: a write to the broker's own database, safe while it runs."""
    try:
        key = asyncio.run(rotate_keys(cfg))
    except SecretKeyError as exc:
        print(f"tenure-broker: {exc}", file=sys.stderr)
        return 2
    except (signing.KeyFileError, StorageUnavailable) as exc:
        print(f"tenure-broker: {exc}", file=sys.stderr)
        return 1
    print(f"Added signing key {key.kid}; a running broker signs with it within {int(cfg.key_reload_seconds)} seconds.")
    return 0


async def rotate_keys(cfg: configuration.Config) -> jws.SigningKey:
    """What ``keys rotate`` does: add a signing key to the database of ``cfg``'s broker,
    through a connection of its own, as another process would."""
    from broker.store import open_store

    embedded = cfg.database is None
    if embedded:
        secretfiles.prepare_data_dir(cfg.data_dir, cfg.db_path)
    owner = folder_owner(cfg.data_dir) if embedded else None
    store = await open_store(cfg)
    try:
        secret = await signing.unlock(cfg, store, may_generate_secret=embedded)
        return await signing.rotate(store, secret, cfg.clock.now())
    finally:
        await store.close()
        if owner is not None:  # run as root: the broker's user must still open its database
            secretfiles.give_database_files(cfg.db_path, owner)


def _copy(command: str, file: Path, cfg: configuration.Config) -> int:
    from broker import backup

    try:
        if command == "backup":
            done = backup.backup(cfg.db_path, file)
            print(
                f"Backed up {count(done.estates, 'estate')} and {count(done.live_leases, 'live lease')} "
                f"({done.size:,} bytes, schema {done.schema_version}) into {done.path}. "
                "It holds the signing and code keys sealed under the secret key, and neither the secret key "
                "nor the operator token: keep those apart."
            )
        else:
            done = backup.restore(file, cfg.db_path)
            print(
                f"Restored {count(done.estates, 'estate')} and {count(done.live_leases, 'live lease')} into "
                f"{cfg.data_dir}. Start the broker with the same secret key: TENURE_SECRET_KEY, or the old "
                "data directory's secret-key copied beside it."
            )
    except backup.BackupError as exc:
        print(f"tenure-broker: {exc}", file=sys.stderr)
        return 1
    return 0


def _copy_store(cfg: configuration.Config, url: str) -> int:
    """``copy-store``: one line on stdout when the copy is made and verified (exit 0); else
    what stopped it, or each difference found, on stderr, with nothing written (exit 1 or 2)."""
    from broker import copystore

    try:
        done = copystore.copy_store(cfg, url)
    except copystore.CopyDiffers as exc:
        for line in exc.differences:
            print(f"tenure-broker: {line}", file=sys.stderr)
        print(f"tenure-broker: {exc}", file=sys.stderr)
        return exc.exit_code
    except copystore.CopyError as exc:
        print(f"tenure-broker: {exc}", file=sys.stderr)
        return exc.exit_code
    print(done.line())
    return 0


def _check(cfg: configuration.Config) -> int:
    """``check``: one line per finding on stdout, a summary on stderr; exit 0 when the
    books hold, 1 when something was found, 2 when the database cannot be opened."""
    from broker import books

    if cfg.database is None and not cfg.db_path.exists():  # opening it would make an empty one
        print(f"tenure-broker: cannot open the database: {cfg.db_path} does not exist", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(check_books(cfg))
    except (StorageUnavailable, SchemaTooNew) as exc:
        print(f"tenure-broker: {exc}", file=sys.stderr)
        return 2
    for line in report.findings:
        print(line)
    print(books.summary(report), file=sys.stderr)
    return 1 if report.findings else 0


async def check_books(cfg: configuration.Config) -> books.Report:
    """What ``check`` does: one read, one consistent snapshot, through a store of its own
    (as another process would open it); nothing is written."""
    from broker import books
    from broker.store import open_store

    owner = folder_owner(cfg.data_dir) if cfg.database is None else None
    store = await open_store(cfg)
    try:
        return await store.read(lambda tx: books.check(tx, cfg.clock.now()))
    finally:
        await store.close()
        if owner is not None:  # run as root: the broker's user must still open its database
            secretfiles.give_database_files(cfg.db_path, owner)


def serve(cfg: configuration.Config) -> int:
    from broker import workers

    ssl_context = None
    if cfg.tls_cert and cfg.tls_key:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ssl_context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        except (OSError, ssl.SSLError) as exc:
            print(f"tenure-broker: setting 'tls_cert'/'tls_key': {exc}", file=sys.stderr)
            return 2
    if cfg.database is not None and cfg.operator_token is None:
        print(
            "tenure-broker: setting 'operator_token' is required with a PostgreSQL database: every "
            "replica must accept the same operator token (TENURE_OPERATOR_TOKEN: tnr_op_ and at least "
            "25 more characters, e.g. from `echo tnr_op_$(head -c 32 /dev/urandom | base64 | tr +/ -_ | tr -d =)`)",
            file=sys.stderr,
        )
        return 2
    count = workers.count(cfg)
    if count == 1:
        notifier = Notifier()
        scheme = "https" if ssl_context else "http"

        def ready() -> None:
            # Type=notify: systemd starts what depends on the broker only now, when it answers.
            notifier.ready(f"listening on {scheme}://{cfg.host}:{cfg.port}")

        return serve_process(cfg, ssl_context, None, worker=None, ready=ready, stopping=notifier.stopping)
    try:
        sockets = workers.listen(cfg.host, cfg.port, count)
    except OSError as exc:
        print(f"tenure-broker: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}", file=sys.stderr)
        return 1
    # Imported once here, before the fork, rather than in every worker after it.
    import broker.app  # noqa: F401

    # On SQLite one writer process runs the workers' hot transactions (broker.store.relay).
    relay = cfg.database is None and workers.SQLITE_WRITER
    # Every process writes what it counted here, for /metrics to sum (broker.figures).
    figures_dir = Path(tempfile.mkdtemp(prefix="tenure-broker-figures-"))
    cfg = dataclasses.replace(cfg, figures_dir=figures_dir)
    worker_cfg = dataclasses.replace(cfg, relay_writes=True) if relay else cfg
    try:
        return workers.supervise(
            cfg,
            sockets,
            lambda index, ready: serve_process(
                worker_cfg, ssl_context, sockets[index], worker=index, ready=ready, stopping=lambda: None
            ),
            https=ssl_context is not None,
            writer=(lambda ready: writer_process(cfg, ready)) if relay else None,
        )
    finally:
        shutil.rmtree(figures_dir, ignore_errors=True)


def writer_process(cfg: configuration.Config, ready: Callable[[], None]) -> int:
    """The writer of ``serve --workers`` on SQLite: the store, and the workers' jobs."""
    from broker.store.relay import serve_writer, socket_path
    from broker.store.sqlite import SqliteStore

    async def run() -> None:
        secretfiles.prepare_data_dir(cfg.data_dir, cfg.db_path)
        store = await SqliteStore.open(cfg.db_path, cfg.sqlite_synchronous)
        secretfiles.secure_database_files(cfg.db_path)
        publishing = None
        if cfg.figures_dir is not None:
            own = partial(figures.of_writer, store)
            publishing = asyncio.get_running_loop().create_task(figures.publish_loop(cfg.figures_dir, own))
        # What start-up made (modules, the store's queries and connections) lives as long as
        # the process: out of the collector's way, as in each worker (serve_process). Else a
        # full collection walked it on this loop, holding every batch 15-25 ms.
        gc.collect()
        gc.freeze()
        try:
            await serve_writer(store, socket_path(cfg.data_dir), ready)
        finally:
            if publishing is not None:
                publishing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await publishing
            await store.close()

    try:
        asyncio.run(run())
    except SchemaTooNew as exc:
        print(f"tenure-broker: {exc}", file=sys.stderr)
        return 2
    except (StorageUnavailable, OSError) as exc:
        print(f"tenure-broker: writer: {exc}", file=sys.stderr)
        return 1
    return 0


def serve_process(
    cfg: configuration.Config,
    ssl_context: ssl.SSLContext | None,
    sockets: list[socket.socket] | None,
    *,
    worker: int | None,
    ready: Callable[[], None],
    stopping: Callable[[], object],
) -> int:
    """One broker process: the whole broker (``worker`` None), or worker ``worker`` of
    ``serve --workers``, serving on ``sockets`` made for it; ``ready`` is called once it
    answers. Returns the exit code."""
    from broker.app import create_app
    from broker.services import SERVICES
    from broker.stopping import stop_on_first_signal

    scheme = "https" if ssl_context else "http"
    log = logging.getLogger("tenure.broker")
    which = f"pid {os.getpid()}" if worker is None else f"worker {worker}, pid {os.getpid()}"

    def listening(_banner: str) -> None:
        # run_app calls its ``print`` once every socket is bound: the one moment at which
        # "listening" is true (an on_startup hook runs before the bind, and may lie).
        # What start-up made (modules, routes, keys, the schema's queries) lives as long
        # as the process: out of the collector's way, a full collection walks only what
        # serving made (docs/performance.md, "The tail").
        gc.collect()
        gc.freeze()
        log.info("listening on %s://%s:%d (%s)", scheme, cfg.host, _port(cfg, sockets), which)
        # A worker stops gracefully from now on; until now SIGTERM ended it at once,
        # with nothing in flight (a start-up cut short halfway may leave threads behind
        # that never let the process exit). A whole broker replaces aiohttp's handlers,
        # which begin the shutdown at once, even while a request's body is on its way.
        stop_on_first_signal(asyncio.get_running_loop(), app[SERVICES].bodies, cfg.body_timeout_seconds)
        if worker is None:
            base = cfg.public_url or f"{scheme}://{cfg.host}:{cfg.port}"
            log.info("console at %s/console/", base.rstrip("/"))
        ready()

    try:
        # Housekeeping (the lease reaper, the idempotency purge) runs in one process;
        # every worker reloads its own signing keys.
        app = create_app(cfg, worker=worker or 0, housekeeping=not worker)

        async def on_shutdown(_app: web.Application) -> None:
            stopping()

        app.on_shutdown.append(on_shutdown)
        web.run_app(
            app,
            host=None if sockets else cfg.host,
            port=None if sockets else cfg.port,
            sock=sockets,
            ssl_context=ssl_context,
            print=listening,
            access_log=None,
            shutdown_timeout=10,
            handle_signals=worker is None,
        )
    except (SecretKeyError, SchemaTooNew, secretfiles.OperatorTokenMissing) as exc:
        print(f"tenure-broker: {exc}", file=sys.stderr)
        return 2
    except (signing.KeyFileError, StorageUnavailable) as exc:
        print(f"tenure-broker: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.filename:  # a file in the data directory, not the address
            print(f"tenure-broker: cannot use {exc.filename}: {exc.strerror}", file=sys.stderr)
        else:
            print(f"tenure-broker: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}", file=sys.stderr)
        return 1
    log.info("stopped (%s)", which)
    return 0


def _port(cfg: configuration.Config, sockets: list[socket.socket] | None) -> int:
    return int(sockets[0].getsockname()[1]) if sockets else cfg.port


if __name__ == "__main__":
    sys.exit(main())
