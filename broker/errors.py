"""Domain errors: what the API reports on purpose, each with its HTTP status and code.

Domain code raises these; the middleware (``broker.api.middleware.every_request``) renders
any ``TenureError`` as ``application/problem+json`` (RFC 9457) from the class's own
``status``, ``code`` and ``title``, so a subclass answers as its parent unless it says
otherwise: the class is the mapping, and there is no table to keep in step with it.
The middleware maps aiohttp's own HTTP errors (no route, wrong method, body too large)
onto these classes; anything else raised is logged and answered with a generic 500.

The tree, including the classes defined beside the code that raises them:

    TenureError                           500 internal_error
    ├── Inconsistent                      500 internal_error
    ├── ValidationFailed                  400 validation_error
    ├── Unauthenticated                   401 unauthenticated
    │   └── SessionEnded                  401 session_ended        (broker.console)
    ├── Forbidden                         403 forbidden
    │   └── CsrfFailed                    403 csrf_failed          (broker.console)
    ├── AuthCodeInvalid                   403 auth_code_invalid
    ├── NotFound                          404 not_found
    ├── Conflict                          409 conflict
    │   ├── LicencesInUse                 409 licences_in_use
    │   ├── PoolExhausted                 409 pool_exhausted
    │   ├── LicenceTypeNotInPool          409 licence_type_not_in_pool
    │   ├── NameTaken                     409 name_taken
    │   ├── PoolNotEmpty                  409 pool_not_empty
    │   │   └── DefaultPoolFixed          409 default_pool         (broker.pools)
    │   ├── PrimaryAdmin                  409 primary_admin        (broker.estates)
    │   ├── ServerHasLeases               409 server_has_leases
    │   ├── NoValidLicences               409 no_valid_licences
    │   ├── LeaseRace                     409 lease_race
    │   ├── ServerLimit                   409 server_limit
    │   ├── ReservationExceedsPool        409 reservation_exceeds_pool
    │   └── ConstraintViolated            409 conflict
    ├── RequestTimeout                    408 request_timeout      (broker.api.http)
    ├── LeaseGone                         410 lease_gone
    ├── PayloadTooLarge                   413 payload_too_large
    ├── UnsupportedMediaType              415 unsupported_media_type (broker.console)
    ├── IdempotencyKeyReused              422 idempotency_key_reused
    ├── RateLimited                       429 rate_limited (+ Retry-After)
    ├── StorageUnavailable                503 storage_unavailable
    └── ShuttingDown                      503 shutting_down        (broker.stopping)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class TenureError(Exception):
    """Base of every error the API reports on purpose."""

    status = 500
    code = "internal_error"
    title = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://tenure.dev/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        }
        body.update(self.extra)
        return body


class Inconsistent(TenureError):
    """Something the broker relies on does not hold: stored data contradicting what the
    transaction has just read or written, or a caller breaking a function's contract.
    A bug (or a store breaking its contract): logged, and answered as any other 500."""


class ValidationFailed(TenureError):
    status, code, title = 400, "validation_error", "The request is not valid"

    def __init__(self, errors: list[dict[str, str]], detail: str | None = None) -> None:
        first = errors[0] if errors else {"field": "", "message": "invalid"}
        where = f"{first['field']}: " if first.get("field") else ""
        super().__init__(detail or f"{where}{first['message']}", errors=errors)


class Unauthenticated(TenureError):
    status, code, title = 401, "unauthenticated", "Authentication required"


class Forbidden(TenureError):
    status, code, title = 403, "forbidden", "Not allowed for this token"


class AuthCodeInvalid(TenureError):
    status, code, title = 403, "auth_code_invalid", "Authentication code not valid"


class NotFound(TenureError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(TenureError):
    status, code, title = 409, "conflict", "Conflict"


class LicencesInUse(Conflict):
    code, title = "licences_in_use", "Not enough unused licences"


class PoolExhausted(Conflict):
    code, title = "pool_exhausted", "The pool cannot cover this request"


class LicenceTypeNotInPool(Conflict):
    """An acquire names a type the pool holds none of: a typo or a wrong pool, not a shortage."""

    code, title = "licence_type_not_in_pool", "The pool holds no licences of this type"


class NameTaken(Conflict):
    code, title = "name_taken", "Name already taken"


class PoolNotEmpty(Conflict):
    code, title = "pool_not_empty", "The pool still has servers or leases"


class ServerHasLeases(Conflict):
    code, title = "server_has_leases", "The server holds leases"


class NoValidLicences(Conflict):
    code, title = "no_valid_licences", "The pool holds no valid licence"


class ServerLimit(Conflict):
    """A grant would take the server's encoders past the ``max`` an admin set for the type."""

    code, title = "server_limit", "The server has reached its limit for this licence type"


class ReservationExceedsPool(Conflict):
    """Reservations in a pool would exceed its holding of the type (a limit, a rebind or a move)."""

    code, title = "reservation_exceeds_pool", "Reservations would exceed the pool's licences"


class LeaseRace(Conflict):
    """Another request for the same encoder committed its lease first (a store whose
    writers run side by side caught it with the one-active-lease constraint)."""

    code, title = "lease_race", "Another request changed this lease at the same moment"


class ConstraintViolated(Conflict):
    """A database constraint refused a write: the store's own guard of an invariant.

    Stores raise it, whatever their database, from the ``Tx`` call whose statement broke
    the constraint, with ``constraint`` set to the constraint's stable name (listed in
    ``broker.store.base``). Domain code that can meet one turns it into the error that
    operation means (``NameTaken``, ``PoolExhausted``…); one that reaches the API
    untranslated is still a 409 ``conflict``, never a 500. The name stays out of the
    answer: it is the schema's business, and is logged instead.
    """

    title = "The change conflicts with the data as it stands"

    def __init__(self, constraint: str, detail: str | None = None) -> None:
        super().__init__(detail or "Another change got there first; reload and try again.")
        self.constraint = constraint


@contextmanager
def constraint_means(error: Callable[[], TenureError], *constraints: str) -> Iterator[None]:
    """Inside the block, a ``ConstraintViolated`` of one of ``constraints`` raises ``error()``.

    The transaction is not to be used after it: a store may have aborted it (PostgreSQL
    does), so the only thing left to do is raise, which this does.
    """
    try:
        yield
    except ConstraintViolated as exc:
        if exc.constraint not in constraints:
            raise
        raise error() from exc


class LeaseGone(TenureError):
    status, code, title = 410, "lease_gone", "The lease is gone"

    def __init__(self, reason: str) -> None:
        super().__init__(f"The lease was {reason}; acquire a new one.", reason=reason)
        self.reason = reason


class PayloadTooLarge(TenureError):
    status, code, title = 413, "payload_too_large", "Request body too large"


class IdempotencyKeyReused(TenureError):
    status, code, title = 422, "idempotency_key_reused", "Idempotency key reused"


class RateLimited(TenureError):
    status, code, title = 429, "rate_limited", "Too many requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.retry_after = retry_after


class StorageUnavailable(TenureError):
    status, code, title = 503, "storage_unavailable", "Storage unavailable"
