"""The broker application: ``create_app(config)`` and its start-up and clean-up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiohttp import web

from broker import audit, console, reaper, secretfiles, signing
from broker.api import (  # noqa: F401 - registers routes
    agent,
    estate,
    metrics,
    operator,
    pools,
    public,
    stream,
    usage,
    webhooks,
)
from broker.api.http import MAX_BODY, ROUTES
from broker.api.middleware import every_request
from broker.config import Config
from broker.ids import token_hash
from broker.principals import PrincipalCache
from broker.ratelimit import StoredLimiter
from broker.services import SERVICES, Services
from broker.store import describe_database, open_store
from broker.store.base import Store
from broker.webhooks import guard
from broker.webhooks.delivery import SCHEDULE
from broker.webhooks.runtime import Webhooks
from shared import words

log = logging.getLogger("tenure.broker")


def create_app(config: Config, *, worker: int = 0, housekeeping: bool = True) -> web.Application:
    """The broker's application; ``worker`` is its index under ``serve --workers`` (shown
    on ``/metrics``), and ``housekeeping`` whether it runs the lease reaper and the
    idempotency purge (one process of several is enough)."""
    app = web.Application(middlewares=[every_request], client_max_size=MAX_BODY)
    app[metrics.REQUESTS] = metrics.RequestMetrics()
    app[metrics.WORKER] = worker
    for r in ROUTES:
        app.router.add_route(r.method, r.path, r.handler, name=r.handler.__name__)
    app.cleanup_ctx.append(_services(config))
    stream.setup(app)
    if config.figures_dir is not None:
        app.cleanup_ctx.append(metrics.publishing(config.figures_dir))
    app.cleanup_ctx.append(_background(reaper.key_loop))
    if housekeeping:
        app.cleanup_ctx.append(_background(reaper.lapse_loop))
        app.cleanup_ctx.append(_background(reaper.purge_loop))
        app.cleanup_ctx.append(_background(reaper.usage_loop))
    app.cleanup_ctx.append(_webhooks(config))
    console.setup(app)
    app.on_shutdown.append(_stopping)
    return app


async def _stopping(app: web.Application) -> None:
    log.info("shutting down: finishing requests in flight (up to 10 s), then closing the database")


def _services(config: Config) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        embedded = config.database is None
        if embedded:
            secretfiles.prepare_data_dir(config.data_dir, config.db_path)
        store = await open_store(config)
        if embedded:
            secretfiles.secure_database_files(config.db_path)  # as SQLite left them (see prepare_data_dir)
        try:
            op_token = await _operator_token(config, store)
            # The embedded store keeps a generated secret key in the data directory; replicas
            # on a shared database are all given the deployment's one.
            keyring, code_key = await signing.start(config, store, config.clock.now(), may_generate_secret=embedded)
            await _chain_audit_backlog(store)
        except BaseException:
            await store.close()  # clean-up runs only after a finished start-up
            raise
        app[SERVICES] = Services(
            config=config,
            clock=config.clock,
            store=store,
            keyring=keyring,
            principals=PrincipalCache(store, config.clock),
            limiter=StoredLimiter(
                store,
                config.clock,
                config.redeem_failures_per_address,
                config.redeem_failures_global,
                config.redeem_window_seconds,
            ),
            code_key=code_key,
            operator_hash=token_hash(op_token),
            metrics_hash=token_hash(config.metrics_token) if config.metrics_token else None,
            issuer=config.public_url or "tenure",
        )
        if embedded:
            log.info(
                "broker data in %s (database %s, synchronous=%s)",
                config.data_dir,
                config.db_path.name,
                config.sqlite_synchronous,
            )
        else:
            log.info("broker data in PostgreSQL %s", describe_database(config.database or ""))
        try:
            yield
        finally:
            await store.close()

    return ctx


def _webhooks(config: Config) -> Callable[[web.Application], AsyncIterator[None]]:
    """Webhook delivery and the expiry scheduler (``broker.webhooks``), stopped before the store closes."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        svc = app[SERVICES]
        hooks = Webhooks(
            svc.store,
            svc.clock,
            svc.keyring.secret,
            resolve=config.webhook_resolve or guard.system_resolve,
            allow_private=config.webhook_allow_private,
            timeout_seconds=config.webhook_timeout_seconds,
            poll_seconds=config.webhook_poll_seconds,
            scan_seconds=config.webhook_scan_seconds,
            schedule=config.webhook_schedule or SCHEDULE,
        )
        app[webhooks.WEBHOOKS] = hooks
        async with hooks.running():
            yield

    return ctx


async def _chain_audit_backlog(store: Store) -> None:
    """Chain the events a broker before the hash chain wrote (once, after that upgrade),
    before any request can add to a chain. A batch a write, so no write is long."""
    chained = 0
    while (done := await store.write(audit.chain_backlog)) > 0:
        chained += done
    if chained:
        log.info("chained %d audit event(s) written before the audit log was hash-chained", chained)


async def _operator_token(config: Config, store: Store) -> str:
    """The operator token; one is generated only for a database that holds no estate yet.

    A database restored without its data directory's operator-token file must not be
    handed to a new operator silently: the old token is what its operator holds.
    """
    if config.operator_token or secretfiles.operator_token_exists(config.data_dir):
        return secretfiles.operator_token(config.data_dir, config.operator_token)
    estates = await store.read(lambda tx: tx.scalar("estates_count"))
    if estates:
        raise secretfiles.OperatorTokenMissing(
            f"the database holds {words.count(estates, 'estate')}, and this broker has no operator token: set "
            f"TENURE_OPERATOR_TOKEN (setting 'operator_token') to the deployment's, or copy the old data "
            f"directory's operator-token to {config.data_dir / 'operator-token'}; a new token would lock its "
            "operator out"
        )
    return secretfiles.operator_token(config.data_dir, None)


def _background(
    loop: Callable[[Services], Coroutine[Any, Any, None]],
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(loop(app[SERVICES]), name=loop.__name__)
        try:
            yield
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    return ctx
