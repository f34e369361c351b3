"""The service's named errors. Each carries a stable machine ``code``; HTTP statuses live in ``http.py``.

The hierarchy follows who is at fault: the request (``RequestError``), the business rules
(``DomainError``), a concurrent writer (``ConcurrencyError``) or our own infrastructure.
"""

from __future__ import annotations

from typing import ClassVar


class LedgerError(Exception):
    """Base of every error the service raises on purpose."""

    code: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class RequestError(LedgerError):
    code = "invalid-request"
    title = "Invalid request"


class MalformedJson(RequestError):
    code = "malformed-json"
    title = "Request body is not valid JSON"


class DuplicateKey(RequestError):
    code = "duplicate-key"
    title = "A key appears twice in one JSON object"


class InvalidBody(RequestError):
    code = "invalid-body"
    title = "Request body has the wrong shape"


class MissingField(RequestError):
    code = "missing-field"
    title = "A required field is missing"


class InvalidField(RequestError):
    code = "invalid-field"
    title = "A field has an invalid value"


class InvalidAccountId(RequestError):
    code = "invalid-account-id"
    title = "Invalid account id"


class InvalidAmount(RequestError):
    code = "invalid-amount"
    title = "Invalid amount"


class InvalidHeader(RequestError):
    code = "invalid-header"
    title = "A request header has an invalid value"


class InvalidConsistencyToken(InvalidHeader):
    code = "invalid-consistency-token"
    title = "A Consistency-Token header holds a token this service did not issue"


class InvalidQuery(RequestError):
    code = "invalid-query"
    title = "A query parameter has an invalid value"


class PayloadTooLarge(RequestError):
    code = "payload-too-large"
    title = "Request body too large"


class UnsupportedMediaType(RequestError):
    code = "unsupported-media-type"
    title = "Unsupported content type"


class RouteNotFound(RequestError):
    code = "route-not-found"
    title = "No such route"


class MethodNotAllowed(RequestError):
    code = "method-not-allowed"
    title = "Method not allowed on this route"


class AuthenticationError(LedgerError):
    """The request does not prove who sent it (401, with a ``WWW-Authenticate`` challenge)."""

    code = "unauthenticated"
    title = "Authentication required"


class MissingToken(AuthenticationError):
    code = "unauthenticated"
    title = "Authentication required"


class InvalidToken(AuthenticationError):
    """A bearer token was sent and refused. The detail says which check failed, never what the token holds."""

    code = "invalid-token"
    title = "The bearer token is not valid"


class InsufficientScope(LedgerError):
    code = "insufficient-scope"
    title = "The token does not allow this request"

    def __init__(self, detail: str, scope: str) -> None:
        super().__init__(detail)
        self.scope = scope


class AuthUnavailable(LedgerError):
    """The identity provider's keys are needed and cannot be fetched: the token may be good, so this is a
    503 to retry, never a 401 and never a request let through."""

    code = "auth-unavailable"
    title = "The identity provider cannot be reached"


class DomainError(LedgerError):
    code = "domain-error"
    title = "Business rule violated"


class AccountNotFound(DomainError):
    code = "account-not-found"
    title = "Account not found"


class AccountAlreadyExists(DomainError):
    code = "account-already-exists"
    title = "Account already exists"


class InsufficientFunds(DomainError):
    code = "insufficient-funds"
    title = "Insufficient funds"


class BalanceLimitExceeded(DomainError):
    code = "balance-limit-exceeded"
    title = "Balance limit exceeded"


class IdempotencyKeyRequired(RequestError):
    code = "idempotency-key-required"
    title = "This service requires an Idempotency-Key on every POST"


class IdempotencyKeyReused(LedgerError):
    code = "idempotency-key-reused"
    title = "Idempotency key reused with a different request"


class ConcurrencyError(LedgerError):
    code = "concurrency-error"
    title = "Concurrent modification"


class VersionConflict(ConcurrencyError):
    code = "version-conflict"
    title = "Too many concurrent writers"


class PreconditionFailed(ConcurrencyError):
    code = "precondition-failed"
    title = "If-Match precondition failed"


class StoreUnavailable(LedgerError):
    code = "store-unavailable"
    title = "Event store unavailable"

    @classmethod
    def unreachable(cls) -> StoreUnavailable:
        """What a client is told when Redis cannot be reached: nothing internal (which backend, which
        exception); the cause goes to the log line with the exception chained to this one."""
        return cls("the event store cannot be reached now, and nothing was written; retry shortly")


class StoreFull(StoreUnavailable):
    """Redis refused a write for lack of memory (``maxmemory`` with ``noeviction``). The append script's
    first write is refused before it writes anything, so nothing was written; reads still work."""

    code = "store-full"
    title = "Event store full"

    @classmethod
    def refused(cls) -> StoreFull:
        return cls("the event store is out of memory and refuses new events; nothing was written, and reads "
                   "still work; retry later")


class OutcomeUnknown(StoreUnavailable):
    """The append was sent (or stored on the primary only) and whether it took, or will survive, is not
    known within the request's time: the client must retry with the same Idempotency-Key, or look for its
    correlation id in the account's events, before it assumes either outcome."""

    code = "outcome-unknown"
    title = "The outcome of this request is unknown"


class ReadModelUnavailable(LedgerError):
    """The read model (MongoDB) cannot answer now: a query is a 503 (writes and the Redis-served reads still
    work); the projector acknowledges nothing, so everything it was applying stays pending."""

    code = "read-model-unavailable"
    title = "Read model unavailable"

    @classmethod
    def unreachable(cls) -> ReadModelUnavailable:
        return cls("the read model cannot be reached now; GET /accounts/{id} and its events are served from the "
                   "event store and still answer; retry shortly")


class ProjectionBehind(LedgerError):
    """A query asked for at least the writes its consistency token covers, and the read model had not applied
    them within the wait. ``retry_after`` (seconds) is the advice the answer carries."""

    code = "projection-behind"
    title = "The read model has not caught up with your writes yet"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class ProjectionParked(LedgerError):
    """A write the token covers was parked by the projector (it cannot be applied without an operator): no
    wait can succeed, so the query is refused at once rather than answered without it."""

    code = "projection-parked"
    title = "A write this query must include cannot be projected"


class CorruptHistory(LedgerError):
    """The stored events cannot be folded: our bug or tampering, never the client's."""

    code = "corrupt-history"
    title = "Stored history cannot be read"


class ArchiveUnavailable(LedgerError):
    """Part of an account's history lives in the archive (object storage), and the archive cannot give it now:
    only reads that reach that far back fail; the account's balance and new writes are served from Redis."""

    code = "archive-unavailable"
    title = "Archived history unavailable"

    @classmethod
    def unreachable(cls) -> ArchiveUnavailable:
        return cls("this part of the account's history is archived and the archive cannot be reached now; the "
                   "account itself still answers; retry shortly")


class ArchiveDamaged(ArchiveUnavailable):
    """A segment the account's history needs is missing or fails its checksum: an operator must restore it
    (``python -m projector verify --deep`` lists every one). Never skipped: a gap would be a wrong answer."""

    code = "archive-damaged"
    title = "Archived history damaged"

    @classmethod
    def for_client(cls) -> ArchiveDamaged:
        return cls("part of this account's archived history cannot be read; operators have been alerted; the "
                   "account itself still answers")
