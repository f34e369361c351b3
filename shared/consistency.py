"""Consistency tokens: what a write answers with so that a later query can ask for "at least my writes".

A token names, per partition, a position in that partition's log (the write's own, or the log's end for an
answer that wrote nothing): a position vector like Kafka's. It is opaque to clients and signed by the service
(HMAC-SHA256 with ``CONSISTENCY_TOKEN_SECRET``, bound to the deployment's key prefix and partition count), so
a client can neither forge nor shift one, and a token of another deployment is refused. Several tokens merge
into one by taking each partition's furthest position: a client that sends every token it holds waits for
all of its writes, and a query answers with the merged token.

Wire form: ``v1.<positions>.<signature>``: ``<positions>`` is ``<partition>_<ms>-<seq>`` items joined by "~",
the signature the HMAC's first 128 bits in hex. Every character is one HTTP lets a header value carry, and
none is a comma, so tokens can be joined with commas. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping

from shared.errors import InvalidConsistencyToken
from shared.event_store import Position

VERSION = "v1"
#: More than any client needs (one partition per token, merged), few enough to bound the work of one request.
MAX_TOKENS = 32
MAX_HEADER_BYTES = 8_192
_ITEM = re.compile(r"(?P<partition>[0-9]{1,5})_(?P<ms>[0-9]{1,20})-(?P<seq>[0-9]{1,20})")
_TOKEN = re.compile(r"v1\.(?P<body>[0-9_~-]{1,4096})\.(?P<signature>[0-9a-f]{32})")
#: A partition-log position as numbers, so positions compare in log order.
LogPosition = tuple[int, int]


def position_of(entry_id: str) -> LogPosition:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def entry_id_of(position: LogPosition) -> str:
    return f"{position[0]}-{position[1]}"


class ConsistencyTokens:
    """Issues and reads the tokens of one deployment."""

    def __init__(self, secret: str, prefix: str, partitions: int) -> None:
        if len(secret) < 32:
            raise ValueError("a consistency-token secret must be at least 32 characters")
        key = hmac.new(secret.encode(), f"ledgerstream consistency {prefix} {partitions}".encode(),
                       hashlib.sha256).digest()  # a key of this deployment's own, derived once
        # Keyed once: each signature copies it (a fresh HMAC re-derives its pads from the key every time).
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self._partitions = partitions

    def issue(self, positions: Mapping[int, LogPosition] | Position) -> str:
        if isinstance(positions, Position):  # every write's: its entry id is already "<ms>-<seq>"
            body = f"{positions.partition}_{positions.entry_id}"
        else:
            body = "~".join(f"{p}_{entry_id_of(positions[p])}" for p in sorted(positions))
        return f"{VERSION}.{body}.{self._sign(body)}"

    def read(self, values: Iterable[str]) -> dict[int, LogPosition]:
        """The merged positions of every token in ``values`` (header values, each possibly several tokens
        joined by commas); ``InvalidConsistencyToken`` for anything this deployment did not issue."""
        merged: dict[int, LogPosition] = {}
        tokens = [t.strip() for value in values for t in value.split(",") if t.strip()]
        if sum(len(t) for t in tokens) > MAX_HEADER_BYTES or len(tokens) > MAX_TOKENS:
            raise InvalidConsistencyToken(f"send at most {MAX_TOKENS} consistency tokens, or merge them: every "
                                          "query answer carries the merge of the tokens it was sent")
        for token in tokens:
            for partition, position in self._positions(token).items():
                if position > merged.get(partition, (0, 0)):
                    merged[partition] = position
        return merged

    def _positions(self, token: str) -> dict[int, LogPosition]:
        match = _TOKEN.fullmatch(token)
        if match is None or not hmac.compare_digest(match["signature"], self._sign(match["body"])):
            raise InvalidConsistencyToken("a Consistency-Token header holds a token this service did not issue "
                                          "(changed, truncated, or from another deployment)")
        positions: dict[int, LogPosition] = {}
        for item in match["body"].split("~"):
            found = _ITEM.fullmatch(item)
            if found is None or int(found["partition"]) >= self._partitions:
                raise InvalidConsistencyToken("a Consistency-Token header holds an unreadable token")
            positions[int(found["partition"])] = (int(found["ms"]), int(found["seq"]))
        return positions

    def _sign(self, body: str) -> str:
        mac = self._mac.copy()
        mac.update(f"{VERSION}.{body}".encode())
        return mac.hexdigest()[:32]  # 128 bits, as HMAC-SHA256-128: a shorter header on every write
