"""Events an operator pages on, counted in this process for ``GET /metrics``.

Each broker process counts its own (Prometheus sums them across replicas); they start at
zero when it starts, as Prometheus counters may.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Counters:
    codes_redeemed: int = 0
    codes_refused: int = 0  # a code that is wrong, used or expired (403 auth_code_invalid)
