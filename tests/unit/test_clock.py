"""Ids and timestamps: cheap to make, and still exactly the formats clients and logs rely on."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from shared.clock import new_id, request_time, utc_millis, utc_now


def test_ids_are_canonical_version_4_uuids() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for each in ids:
        parsed = uuid.UUID(each)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == each  # lower case, 8-4-4-4-12


def test_timestamps_keep_their_formats() -> None:
    now = datetime(2026, 11, 28, 22, 18, 57, 125000, tzinfo=UTC).timestamp()  # exact in binary
    assert utc_now(now) == "2026-11-28T22:18:57.125000Z"
    assert utc_millis(now) == "2026-11-28T22:18:57.125+00:00"
    assert request_time(now) == "28/Nov/2026:22:18:57 +0000"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", utc_now())
