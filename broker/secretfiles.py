"""Secrets kept as files in the data directory, outside the database."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from broker.ids import new_token
from shared.secretfile import write_secret

log = logging.getLogger("tenure.broker")


def prepare_data_dir(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)


def code_key(data_dir: Path) -> bytes:
    """The HMAC key for authentication codes: 32 random bytes, made once."""
    path = data_dir / "code-key"
    if not path.exists():
        write_secret(path, secrets.token_bytes(32))
    data = path.read_bytes()
    if len(data) < 32:
        raise RuntimeError(f"{path} is damaged (shorter than 32 bytes)")
    return data


def operator_token(data_dir: Path, configured: str | None) -> str:
    """The operator token: as configured, else generated once into DATA_DIR/operator-token."""
    if configured:
        return configured
    path = data_dir / "operator-token"
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = new_token("op")
    write_secret(path, (token + "\n").encode())
    log.info("generated the operator token into %s (mode 0600); move it into a secret store", path)
    return token
