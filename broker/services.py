"""What the request handlers share, held in the application under one typed key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from broker.clock import Clock
from broker.config import Config
from broker.counters import Counters
from broker.principals import PrincipalCache
from broker.ratelimit import RedemptionLimiter
from broker.signing import Keyring
from broker.stopping import Bodies
from broker.store.base import Store


@dataclass
class Services:
    config: Config
    clock: Clock
    store: Store
    keyring: Keyring
    principals: PrincipalCache
    limiter: RedemptionLimiter
    code_key: bytes
    operator_hash: bytes
    metrics_hash: bytes | None
    issuer: str
    counters: Counters = field(default_factory=Counters)
    bodies: Bodies = field(default_factory=Bodies)

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir


SERVICES = web.AppKey("services", Services)
