from __future__ import annotations

import pytest

from shared import validation
from shared.errors import InvalidAccountId, InvalidBody, InvalidHeader, InvalidQuery, MissingField
from shared.preconditions import IfMatch


@pytest.mark.parametrize("good", ["a", "alice", "A-1", "x.y_z-9", "0", "a" * 64])
def test_good_account_ids(good: str) -> None:
    assert validation.account_id(good) == good


@pytest.mark.parametrize("bad", ["", "-a", ".a", "a b", "a:b", "{p1}", "a{b}", "ünï", "a/b", "a" * 65, "a\n",
                                 "a\x00", 5, None, ["a"]])
def test_bad_account_ids(bad: object) -> None:
    with pytest.raises(InvalidAccountId):
        validation.account_id(bad)


def test_idempotency_keys() -> None:
    assert validation.idempotency_key(None) is None
    assert validation.idempotency_key("7c9e6679-7425-40de-944b-e07fc1f90ae7") is not None
    for bad in ("", "a b", "ключ", "x" * 256, "a\tb"):
        with pytest.raises(InvalidHeader):
            validation.idempotency_key(bad)


@pytest.mark.parametrize(("header", "expected"), [
    (None, None),
    ("*", IfMatch(any_version=True)),
    ('"3"', IfMatch(versions=frozenset({3}))),
    ("3", IfMatch(versions=frozenset({3}))),
    ('"3", "4"', IfMatch(versions=frozenset({3, 4}))),
    ('W/"3"', IfMatch(weak_tags=('W/"3"',))),
    ('W/"3", "5"', IfMatch(versions=frozenset({5}), weak_tags=('W/"3"',))),
])
def test_if_match(header: str | None, expected: IfMatch | None) -> None:
    assert validation.if_match(header) == expected


@pytest.mark.parametrize("bad", ['"abc"', "", '"-1"', '"1" junk', '"1111111111111111111111"'])
def test_bad_if_match(bad: str) -> None:
    with pytest.raises(InvalidHeader):
        validation.if_match(bad)


def test_page() -> None:
    assert validation.page({}) == (0, validation.DEFAULT_PAGE_SIZE)
    assert validation.page({"after": "5", "limit": "10"}) == (5, 10)
    for bad in ({"limit": "0"}, {"limit": "1001"}, {"after": "-1"}, {"after": "x"}, {"limit": "\uff11"},
                {"other": "1"}):
        with pytest.raises(InvalidQuery):
            validation.page(bad)


def test_fields() -> None:
    assert validation.fields({"amount": 1}, ("amount",)) == [1]
    with pytest.raises(MissingField):
        validation.fields({}, ("amount",))
    with pytest.raises(InvalidBody, match="amout"):
        validation.fields({"amout": 1}, ("amount",))
