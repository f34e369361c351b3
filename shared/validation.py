"""Validation of every client-supplied value: ids, headers, query parameters and body fields."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

from shared.errors import InvalidAccountId, InvalidBody, InvalidField, InvalidHeader, InvalidQuery, MissingField
from shared.preconditions import IfMatch

#: Letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64 characters. The set
#: excludes ':', '{' and '}' so an id can never forge another key or move itself to another hash tag.
ACCOUNT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Visible ASCII, 1 to 255 characters (UUIDs, ULIDs and most client-generated keys fit).
IDEMPOTENCY_KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")
#: An identity provider's names (issuers, subjects, client and token ids): visible ASCII, 1 to 255 characters.
IDENTITY_TEXT_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")
_CORRELATION_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_ETAG = re.compile(r'\s*(W/)?"?([0-9]{1,18})"?\s*')
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def account_id(value: object) -> str:
    if not isinstance(value, str) or not ACCOUNT_ID_PATTERN.fullmatch(value):
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise InvalidAccountId(
            f"account id must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit; "
            f"got {shown!r}"
        )
    return value


def idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not IDEMPOTENCY_KEY_PATTERN.fullmatch(value):
        raise InvalidHeader("Idempotency-Key must be 1-255 visible ASCII characters")
    return value


def correlation_id(value: str | None) -> str | None:
    if value is None:
        return None
    if not _CORRELATION_ID_PATTERN.fullmatch(value):
        raise InvalidHeader("X-Correlation-Id must be 1-128 letters, digits, '.', '_', ':' or '-'")
    return value


def if_match(value: str | None) -> IfMatch | None:
    """Parse If-Match: ``*``, or entity tags whose opaque part is the account version."""
    if value is None:
        return None
    if value.strip() == "*":
        return IfMatch(any_version=True)
    versions: set[int] = set()
    weak: list[str] = []
    for tag in value.split(","):
        match = _ETAG.fullmatch(tag)
        if match is None:
            raise InvalidHeader(f'If-Match must be "*" or entity tags like "3" (the account version), '
                                f"got {value[:80]!r}")
        if match.group(1) is None:
            versions.add(int(match.group(2)))
        else:
            weak.append(tag.strip())
    return IfMatch(versions=frozenset(versions), weak_tags=tuple(weak))


def page(query: Mapping[str, str], repeated: Iterable[str] = ()) -> tuple[int, int]:
    """``after`` (a version, default 0) and ``limit`` (1..1000, default 100) of the events endpoint."""
    twice = sorted(repeated)
    if twice:
        raise InvalidQuery(f"query parameter {twice[0][:40]!r} is given more than once; give it once")
    unknown = set(query) - {"after", "limit"}
    if unknown:
        raise InvalidQuery(f"unknown query parameter {sorted(unknown)[0]!r}; expected after and limit")
    after = _query_int(query, "after", 0, 0, 10**15)
    limit = _query_int(query, "limit", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    return after, limit


def _query_int(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 16 or not low <= int(raw) <= high:
        raise InvalidQuery(f"{name} must be an integer from {low} to {high}, got {raw[:40]!r}")
    return int(raw)


def fields(body: Mapping[str, object], required: tuple[str, ...], optional: tuple[str, ...] = ()) -> list[object]:
    """The required, then the optional fields of a JSON object body, in order (None for an optional one that
    is absent); unknown fields are refused (typos lose money)."""
    unknown = set(body) - set(required) - set(optional)
    if unknown:
        raise InvalidBody(f"unknown field {sorted(unknown)[0][:80]!r}; expected {', '.join(required + optional)}")
    missing = [name for name in required if name not in body]
    if missing:
        raise MissingField(f"field {missing[0]!r} is required")
    return [body[name] for name in required] + [body.get(name) for name in optional]


def identity_text(value: object, name: str) -> str:
    """An issuer or a subject named in a request body."""
    if not isinstance(value, str) or not IDENTITY_TEXT_PATTERN.fullmatch(value):
        raise InvalidField(f"{name} must be 1-255 visible ASCII characters")
    return value


def query(values: Mapping[str, str], repeated: Iterable[str], allowed: tuple[str, ...]) -> Mapping[str, str]:
    """The query parameters, each given at most once and each one of ``allowed``."""
    twice = sorted(repeated)
    if twice:
        raise InvalidQuery(f"query parameter {twice[0][:40]!r} is given more than once; give it once")
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise InvalidQuery(f"unknown query parameter {unknown[0][:40]!r}; expected {', '.join(allowed)}")
    return values


def limit(values: Mapping[str, str]) -> int:
    return _query_int(values, "limit", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)


def moment(values: Mapping[str, str], name: str) -> datetime | None:
    """An RFC 3339 date-time with its offset (2026-03-01T00:00:00Z), or None when not given."""
    raw = values.get(name)
    if raw is None:
        return None
    try:
        parsed = datetime.fromisoformat(raw) if _MOMENT.fullmatch(raw) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise InvalidQuery(f"{name} must be a date-time with an offset, like 2026-03-01T00:00:00Z, got {raw[:40]!r}")
    return parsed.astimezone(UTC)


_MOMENT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})")
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,200}")


def encode_cursor(*parts: str | int) -> str:
    """An opaque page cursor (its fields are ours to change; clients only hand it back)."""
    return base64.urlsafe_b64encode("\n".join(map(str, parts)).encode()).rstrip(b"=").decode()


def decode_cursor(values: Mapping[str, str], fields: int) -> list[str] | None:
    raw = values.get("cursor")
    if raw is None:
        return None
    try:
        if not _CURSOR.fullmatch(raw):
            raise ValueError
        parts = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode().split("\n")
    except (ValueError, UnicodeDecodeError):
        parts = []
    if len(parts) != fields:
        raise InvalidQuery("cursor is not one this service handed out: pass next_cursor from the previous page as "
                           "it is")
    return parts


def account_cursor(values: Mapping[str, str]) -> str | None:
    parts = decode_cursor(values, 1)
    if parts is None:
        return None
    if not ACCOUNT_ID_PATTERN.fullmatch(parts[0]):
        raise InvalidQuery("cursor is not one this service handed out")
    return parts[0]


def statement_cursor(values: Mapping[str, str]) -> tuple[datetime, int] | None:
    parts = decode_cursor(values, 2)
    if parts is None:
        return None
    micros, version = parts
    if not (micros.isascii() and micros.isdigit() and version.isascii() and version.isdigit()
            and len(micros) <= 17 and len(version) <= 15):
        raise InvalidQuery("cursor is not one this service handed out")
    return _EPOCH + timedelta(microseconds=int(micros)), int(version)


def statement_cursor_of(at: datetime, version: int) -> str:
    return encode_cursor((at - _EPOCH) // _MICROSECOND, version)  # timedelta // timedelta: an exact int


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
