"""The archive segment format (shared/archive.py): what is written reads back exactly, and anything that does not
match its name, its header or its checksum is refused as damaged, never read as history."""

from __future__ import annotations

import logging

import pytest

from shared.archive import (
    Archive,
    SegmentConflict,
    SegmentMissing,
    SegmentName,
    decode_segment,
    encode_segment,
    parse_name,
    same_or_conflict,
)
from shared.errors import ArchiveDamaged, CorruptHistory
from shared.stream_codec import FIELDS, encode
from tests.support.events import history


def _entries(account_id: str, first: int, count: int) -> list[list[bytes]]:
    """Flat field lists as XRANGE returns them for versions ``first..``."""
    events = history(account_id, first + count - 1)[first - 1:]
    return [[item for name, value in zip(FIELDS, [str(first + n), *encode(e)], strict=True)
             for item in (name.encode(), value if isinstance(value, bytes) else str(value).encode())]
            for n, e in enumerate(events)]


class DictStorage:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def create(self, name: str, blob: bytes) -> None:
        if name in self.objects:
            same_or_conflict(name, blob, self.objects[name])
        self.objects[name] = blob

    def put(self, name: str, blob: bytes) -> None:
        self.objects[name] = blob

    def get(self, name: str) -> bytes:
        if name not in self.objects:
            raise SegmentMissing(name)
        return self.objects[name]

    def names(self, folder: str) -> list[str]:
        return sorted(k[len(folder) + 1:] for k in self.objects if k.rsplit("/", 1)[0] == folder)

    def delete(self, name: str) -> None:
        self.objects.pop(name, None)


def test_a_segment_reads_back_exactly() -> None:
    entries = _entries("acc-1", 4, 3)
    name, blob = encode_segment("acc-1", entries)
    assert name == SegmentName(4, 6) and parse_name(name.file()) == name
    events = decode_segment("acc-1", name, blob)
    assert [e.version for e in events] == [4, 5, 6]
    assert [e.event_id for e in events] == [fields[7].decode() for fields in entries]


@pytest.mark.parametrize("damage", ["flip", "truncate", "rename", "other-account", "not-json"])
def test_a_damaged_segment_is_refused(damage: str) -> None:
    name, blob = encode_segment("acc-1", _entries("acc-1", 1, 3))
    account = "acc-1"
    if damage == "flip":
        at = len(blob) - 10
        blob = blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1:]
    elif damage == "truncate":
        blob = blob[:-5]
    elif damage == "rename":
        name = SegmentName(2, 4)
    elif damage == "other-account":
        account = "acc-2"
    else:
        blob = b"garbage"
    with pytest.raises(ArchiveDamaged):
        decode_segment(account, name, blob)


def test_a_segment_needs_consecutive_versions_of_one_account() -> None:
    entries = _entries("acc-1", 1, 4)
    with pytest.raises(CorruptHistory):
        encode_segment("acc-1", [entries[0], entries[2]])
    with pytest.raises(CorruptHistory):
        encode_segment("acc-2", entries)


def _store(archive: Archive, entries: list[list[bytes]], previous: int = 0) -> SegmentName:
    name, blob = encode_segment("acc-1", entries, previous)
    archive.storage.create(archive.path("acc-1", name), blob)
    return name


def test_reading_spans_segments_and_ignores_uncommitted_ones() -> None:
    archive = Archive(DictStorage(), "pfx")
    entries = _entries("acc-1", 1, 10)
    _store(archive, entries[0:4])
    head = _store(archive, entries[4:9], previous=1)
    _store(archive, entries[4:10], previous=1)  # an upload past the head: its trim never ran
    assert [e.version for e in archive.read("acc-1", 0, head)] == list(range(1, 10))
    assert [e.version for e in archive.read("acc-1", 2, head, limit=4)] == [3, 4, 5, 6]
    assert archive.read("acc-1", 9, head) == []


@pytest.mark.parametrize("orphan", ["same history", "a history Redis lost"])
def test_overlapping_uploads_are_resolved_by_the_chain(orphan: str, caplog: pytest.LogCaptureFixture) -> None:
    """A crash left 1-7 uploaded, and 1-8 was committed later: the head's chain says which is history, even
    when the orphan holds events a failover lost."""
    caplog.set_level(logging.WARNING, logger="ledgerstream.archive")  # whatever an earlier test configured
    archive = Archive(DictStorage(), "pfx")
    entries = _entries("acc-1", 1, 8)
    lost = entries[:4] + _entries("acc-1", 5, 3) if orphan != "same history" else entries
    _store(archive, lost[0:7])
    head = _store(archive, entries[0:8])
    read = archive.read("acc-1", 0, head)
    assert [e.event_id for e in read] == [fields[7].decode() for fields in entries]
    assert "chain" in caplog.text


def test_a_name_is_never_taken_by_other_bytes() -> None:
    archive = Archive(DictStorage(), "pfx")
    entries = _entries("acc-1", 1, 4)
    name = _store(archive, entries)
    _store(archive, entries)  # the same bytes again: nothing happens
    with pytest.raises(SegmentConflict):
        _store(archive, _entries("acc-1", 1, 4))  # the same versions, other events
    assert decode_segment("acc-1", name, archive.storage.get(archive.path("acc-1", name)))[0].event_id == \
        entries[0][7].decode()


def test_a_gap_or_a_missing_link_is_damage(caplog: pytest.LogCaptureFixture) -> None:
    archive = Archive(DictStorage(), "pfx")
    entries = _entries("acc-1", 1, 9)
    _store(archive, entries[0:4])
    head = _store(archive, entries[6:9], previous=5)
    with pytest.raises(ArchiveDamaged) as caught:
        archive.read("acc-1", 0, head)
    assert "no segment holds version 5" in str(caught.value.__cause__) and "version" not in caught.value.detail
    assert any(r.levelname == "ERROR" and "acc-1" in r.getMessage() for r in caplog.records)
    _store(archive, entries[2:8])  # overlaps: the chain is walked, and its 5-6 is not there
    with pytest.raises(ArchiveDamaged) as caught:
        archive.read("acc-1", 0, head)
    assert "missing" in str(caught.value.__cause__)
