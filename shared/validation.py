"""Validation of every client-supplied value: ids, headers, query parameters and body fields."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

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
