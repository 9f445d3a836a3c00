"""The agent's state directory and the JSON documents kept in it.

The directory holds the server tokens and lease tokens, so it is kept mode 0700 and
every document in it is written with ``shared.secretfile.write_secret`` (mode 0600,
replaced atomically): a crash leaves either the old or the new file, never a torn one.
Each document carries ``"format": 1``; one of another format is refused, not guessed at.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agent.errors import StateError
from shared.secretfile import write_secret

FORMAT = 1


def ensure_dir(path: Path) -> None:
    """Create the state directory (mode 0700) if needed; raise ``StateError`` if unusable."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"cannot create state directory {path}: {exc.strerror}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise StateError(f"state directory {path} is not writable by this user")


def write_document(path: Path, document: dict[str, Any]) -> None:
    """Replace the document at ``path``; raise ``StateError`` naming the file."""
    data = json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"
    try:
        write_secret(path, data)
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror}") from exc


def read_document(path: Path) -> dict[str, Any] | None:
    """The document at ``path``, None if there is none; ``StateError`` if it is unreadable."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise StateError(f"{path} is not valid JSON; move it away and enrol again") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise StateError(f"{path} has an unknown format")
    return document
