"""The agent's exceptions.

::

    AgentError                      anything the agent reports as one line
    ├── ConfigError                 a setting is missing or malformed (names the key)
    ├── StateError                  the state directory cannot be read or written
    ├── EnrollError                 enrolment refused before or by the broker
    └── BrokerError                 a call to the broker did not succeed
        ├── Retryable               worth trying again later, with backoff
        │   ├── BrokerUnavailable   transport failure, timeout, 429, 5xx, garbled answer
        │   └── TokenRejected       a lease token failed verification; never served
        └── BrokerRefused           a final 4xx answer (``code``, ``status``, ``body``)

``CommandExit`` is none of these: a command of ``tenure-agent`` ending with its exit code
(``agent/cli.py`` and ``agent/commands.py``).

Transport errors are always wrapped (``raise BrokerUnavailable(...) from exc``), so that
nothing above ``agent/client.py`` needs to know aiohttp's exception tree.
"""

from __future__ import annotations

from typing import Any


class AgentError(Exception):
    """An error the command line shows as one line, without a traceback."""


# ``tenure-agent``'s exit codes (agent/cli.py says what each means).
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_BROKER_UNREACHABLE = 0, 1, 2, 3, 4


class CommandExit(Exception):
    """``tenure-agent`` ends with exit code ``code``, and ``message`` (if any) on stderr."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code, self.message = code, message


class ConfigError(AgentError):
    """A setting is missing or malformed; the message names it."""


class StateError(AgentError):
    """The state directory cannot be read or written."""


class EnrollError(AgentError):
    """Enrolment cannot go ahead; the message says why in the technician's words."""


class BrokerError(AgentError):
    """A call to the broker did not succeed."""


class Retryable(BrokerError):
    """A failure that may pass: try again with backoff."""

    retry_after: float | None = None


class BrokerUnavailable(Retryable):
    """The broker could not be reached or gave no usable answer."""

    def __init__(self, url: str, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"cannot reach the broker at {url}: {reason}")
        self.url = url
        self.reason = reason
        self.retry_after = retry_after


class TokenRejected(Retryable):
    """The broker answered with a lease token that does not verify against its keys."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"lease token rejected: {reason}")
        self.reason = reason


class BrokerRefused(BrokerError):
    """A final answer: the broker understood and said no (a 4xx other than 429)."""

    def __init__(self, code: str, status: int, body: dict[str, Any]) -> None:
        detail = body.get("detail")
        text = f"{code}: {detail}" if isinstance(detail, str) and detail else code
        super().__init__(text)
        self.code = code
        self.status = status
        self.body = body

    @property
    def detail(self) -> str:
        detail = self.body.get("detail")
        return detail if isinstance(detail, str) else ""
