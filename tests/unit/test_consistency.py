"""Consistency tokens: signed, mergeable, refused when not this deployment's own."""

from __future__ import annotations

import pytest

from shared.consistency import ConsistencyTokens
from shared.errors import InvalidConsistencyToken
from shared.event_store import Position

SECRET = "k" * 40


def tokens(secret: str = SECRET, prefix: str = "ledger", partitions: int = 16) -> ConsistencyTokens:
    return ConsistencyTokens(secret, prefix, partitions)


def test_a_token_names_its_partition_and_position() -> None:
    issued = tokens().issue(Position(3, "1700000000000-7"))
    assert tokens().read([issued]) == {3: (1700000000000, 7)}


def test_tokens_merge_to_the_furthest_position_of_each_partition() -> None:
    t = tokens()
    a, b, c = t.issue(Position(3, "10-0")), t.issue(Position(3, "12-1")), t.issue(Position(5, "9-0"))
    assert t.read([a, f"{b}, {c}"]) == {3: (12, 1), 5: (9, 0)}  # repeated headers and comma-joined alike
    merged = t.issue(t.read([a, b, c]))
    assert t.read([merged]) == {3: (12, 1), 5: (9, 0)}


@pytest.mark.parametrize("change", [
    lambda s: s[:-1] + ("A" if s[-1] != "A" else "B"),  # the signature
    lambda s: s.replace("v1.", "v2."),
    lambda s: s.split(".")[0] + "." + s.split(".")[1][:-2] + "." + s.split(".")[2],  # the positions
    lambda s: "garbage",
    lambda s: s + "." + s,
])
def test_a_changed_token_is_refused(change: object) -> None:
    issued = tokens().issue(Position(1, "5-0"))
    with pytest.raises(InvalidConsistencyToken):
        tokens().read([change(issued)])  # type: ignore[operator]


def test_another_deployments_token_is_refused() -> None:
    issued = tokens().issue(Position(1, "5-0"))
    for other in (tokens(secret="x" * 40), tokens(prefix="other"), tokens(partitions=8)):
        with pytest.raises(InvalidConsistencyToken):
            other.read([issued])


def test_a_partition_outside_the_deployment_is_refused_even_when_signed() -> None:
    wide = tokens(partitions=64)
    issued = wide.issue(Position(40, "5-0"))
    with pytest.raises(InvalidConsistencyToken):
        tokens(partitions=16).read([issued])  # signed for 64 partitions: another key, refused either way


def test_too_many_tokens_are_refused() -> None:
    t = tokens()
    with pytest.raises(InvalidConsistencyToken):
        t.read([t.issue(Position(1, f"{n}-0")) for n in range(40)])


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        ConsistencyTokens("short", "ledger", 16)


def test_a_query_reads_a_repeated_header_and_prefer_allow_stale() -> None:
    from shared import api
    from shared.http import ApiRequest
    from shared.queries import Consistency
    from tests.support.memory import memory_dependencies

    deps = memory_dependencies()
    assert deps.tokens is not None
    first, second = deps.tokens.issue(Position(1, "5-0")), deps.tokens.issue(Position(2, "7-0"))
    request = ApiRequest.from_event({
        "httpMethod": "GET", "path": "/accounts",
        "headers": {"Consistency-Token": second, "Prefer": "return=minimal, allow-stale"},
        "multiValueHeaders": {"Consistency-Token": [first, second], "Prefer": ["return=minimal, allow-stale"]}})
    wanted, merged = api.consistency(request, deps)
    assert wanted.wanted == {1: (5, 0), 2: (7, 0)} and wanted.allow_stale
    assert merged is not None and deps.tokens.read([merged]) == {1: (5, 0), 2: (7, 0)}
    plain = ApiRequest.from_event({"httpMethod": "GET", "path": "/accounts", "headers": {}})
    assert api.consistency(plain, deps) == (Consistency({}), None)
