"""Cold account history: immutable, checksummed segments in object storage, and reading events back from them.

An account's oldest events move out of Redis in segments (``projector/archiving.py`` writes them). A segment
holds consecutive versions ``first..last`` of one account, byte for byte as the account stream held them, and
is named ``<root>/<key prefix>/<account id>/<first>-<last>.seg`` (versions zero-padded, so names sort by
version). Its content is one JSON header line, then the entries:

    {"format": "ledgerstream-segment/1", "account_id": ..., "first": ..., "last": ..., "events": ...,
     "previous": <first version of the segment before it, 0 for none>,
     "sha256": <hex digest of everything after the header line>}
    [[name, value, name, value, ...], ...]       each entry's fields, exactly as stored in the stream

Segments are created, never overwritten (a create-only write: an object of that name with other bytes is a
conflict, reported), so a name stands for one content. Redis records the committed chain's head: how far the
account is archived (``archived``) and where that last segment begins (``segment``), in its snapshot hash,
set by the same guarded script that trims the stream. Each segment names the one before it, so the chain
from the head down to version 1 is exact. Objects off the chain are uploads whose trim never ran (a crash,
a refused trim, a replica that lost its lease meanwhile): harmless, never deleted by the archiver (deleting
can race with another replica's use of the same object), and never read. Readers take the segments ending
at or before ``archived``; only when some of those overlap do they walk the chain to tell which are committed.

Storage adapters (``file_archive.py``, ``s3_archive.py``) only move bytes; every rule about segments is here.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

import orjson

from shared.errors import ArchiveDamaged, CorruptHistory
from shared.events import RecordedEvent
from shared.stream_codec import decode_entries

log = logging.getLogger("ledgerstream.archive")

FORMAT = "ledgerstream-segment/1"
_NAME = re.compile(r"(?P<first>[0-9]{12})-(?P<last>[0-9]{12})\.seg")


class SegmentMissing(Exception):
    """The storage holds no object of that name."""


class SegmentConflict(ArchiveDamaged):
    """A segment's name is taken by other bytes: never overwritten (the one there may be committed)."""


class SegmentStorage(Protocol):
    """Bytes under names, in a bucket or a folder. Raises ``ArchiveUnavailable`` when it cannot be reached."""

    def create(self, name: str, blob: bytes) -> None:
        """Store ``blob`` under a new name; nothing when exactly these bytes are there already;
        ``SegmentConflict`` when other bytes are (a create-only write, never an overwrite)."""
        ...

    def put(self, name: str, blob: bytes) -> None:
        """Store ``blob``, replacing what is there (operators restoring a segment; never the archiver)."""
        ...

    def get(self, name: str) -> bytes:
        """The object's bytes; ``SegmentMissing`` when there is none."""
        ...

    def names(self, folder: str) -> list[str]:
        """The names of every object directly in ``folder``, sorted."""
        ...

    def delete(self, name: str) -> None: ...


class SegmentName(NamedTuple):
    first: int
    last: int

    def file(self) -> str:
        return f"{self.first:012d}-{self.last:012d}.seg"


def same_or_conflict(name: str, blob: bytes, existing: bytes) -> None:
    """What a create-only write does when the name is taken: nothing if the bytes are the same."""
    if existing != blob:
        raise SegmentConflict(f"{name} exists with other content; it is left as it is")


def parse_name(file: str) -> SegmentName | None:
    match = _NAME.fullmatch(file)
    return None if match is None else SegmentName(int(match["first"]), int(match["last"]))


def encode_segment(account_id: str, entries: Sequence[Sequence[bytes]], previous: int = 0
                   ) -> tuple[SegmentName, bytes]:
    """A segment of ``entries`` (flat ``[name, value, ...]`` field lists of consecutive versions, as XRANGE
    returns them) following the committed segment that begins at ``previous`` (0: none), and its name."""
    events = decode_entries((b"", list(fields)) for fields in entries)  # refuses anything it could not read back
    versions = [e.version for e in events]
    if not versions or versions != list(range(versions[0], versions[0] + len(versions))):
        raise CorruptHistory(f"the stream of {account_id} does not hold consecutive versions")
    if any(e.account_id != account_id for e in events):
        raise CorruptHistory(f"the stream of {account_id} holds another account's event")
    body = orjson.dumps([[value.decode() for value in fields] for fields in entries])
    name = SegmentName(versions[0], versions[-1])
    header = {"format": FORMAT, "account_id": account_id, "first": name.first, "last": name.last,
              "events": len(events), "previous": previous, "sha256": hashlib.sha256(body).hexdigest()}
    return name, orjson.dumps(header) + b"\n" + body


def _header(account_id: str, name: SegmentName, blob: bytes) -> dict[str, Any]:
    """The segment's header, checked against its name and bytes (``ArchiveDamaged`` otherwise)."""
    header_line, _, body = blob.partition(b"\n")
    try:
        header = orjson.loads(header_line)
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError("not a segment of this format")
        if hashlib.sha256(body).hexdigest() != header.get("sha256"):
            raise ValueError("checksum mismatch")
        if (header.get("account_id"), header.get("first"), header.get("last")) != (account_id, *name):
            raise ValueError("its header names other versions or another account than its name")
    except ValueError as exc:  # orjson's decode error is a ValueError
        raise ArchiveDamaged(f"segment {name.file()} of {account_id}: {exc}") from exc
    return header


def decode_segment(account_id: str, name: SegmentName, blob: bytes) -> list[RecordedEvent]:
    """The events of a segment, after checking everything it says about itself against its name and bytes;
    ``ArchiveDamaged`` (with the reason) when anything disagrees."""
    header = _header(account_id, name, blob)
    body = blob.partition(b"\n")[2]
    try:
        events = decode_entries((b"", [value.encode() for value in fields]) for fields in orjson.loads(body))
    except (ValueError, TypeError, AttributeError) as exc:  # orjson's decode error is a ValueError
        raise ArchiveDamaged(f"segment {name.file()} of {account_id}: {exc}") from exc
    except CorruptHistory as exc:
        raise ArchiveDamaged(f"segment {name.file()} of {account_id}: {exc.detail}") from exc
    if [e.version for e in events] != list(range(name.first, name.last + 1)) or header.get("events") != len(events):
        raise ArchiveDamaged(f"segment {name.file()} of {account_id}: its events are not versions "
                             f"{name.first} to {name.last}")
    if any(e.account_id != account_id for e in events):
        raise ArchiveDamaged(f"segment {name.file()} of {account_id}: it holds another account's event")
    return events


@dataclass(frozen=True)
class Archive:
    """One deployment's archive: ``storage`` under the folder of its key prefix."""

    storage: SegmentStorage
    key_prefix: str

    def folder(self, account_id: str) -> str:
        return f"{self.key_prefix}/{account_id}"

    def path(self, account_id: str, name: SegmentName) -> str:
        return f"{self.folder(account_id)}/{name.file()}"

    def segments(self, account_id: str) -> list[SegmentName]:
        """Every segment stored for the account, committed or not, in version order."""
        found = (parse_name(file) for file in self.storage.names(self.folder(account_id)))
        return sorted(name for name in found if name is not None)

    def read(self, account_id: str, after: int, head: SegmentName, limit: int | None = None) -> list[RecordedEvent]:
        """Versions ``after+1 .. head.last`` (at most ``limit`` of them) from the committed segments, whose
        head Redis records. A version no committed segment holds, a missing object, a segment failing its
        checks, are ``ArchiveDamaged``, logged as an ERROR with the reason; the error raised says only what a
        client may be told (the reason is its ``__cause__``)."""
        try:
            return self._read(account_id, after, head, limit)
        except ArchiveDamaged as exc:
            log.error("archived history of %s cannot be read: %s", account_id, exc.detail,
                      extra={"fields": {"account_id": account_id, "archive_damage": exc.detail}})
            raise ArchiveDamaged.for_client() from exc

    def committed(self, account_id: str, head: SegmentName) -> list[SegmentName]:
        """The committed segments, oldest first. Those ending at or before the head, when none overlap (the
        chain tiles ``1..head.last``, so anything beside it would overlap it); otherwise the chain itself,
        walked from the head by each segment's ``previous``."""
        stored = [s for s in self.segments(account_id) if s.last <= head.last]
        if all(two.first > one.last for one, two in pairwise(stored)):
            return stored
        log.warning("segments of %s overlap (uploads whose trim never ran): following the chain from its head",
                    account_id, extra={"fields": {"account_id": account_id}})
        chain: list[SegmentName] = []
        at: SegmentName | None = head
        while at is not None:
            if at not in stored:
                raise ArchiveDamaged(f"segment {at.file()} of {account_id}, on its committed chain, is missing")
            chain.append(at)
            previous = int(_header(account_id, at, self._get(account_id, at)).get("previous") or 0)
            at = SegmentName(previous, at.first - 1) if at.first > 1 else None
            if at is not None and not 1 <= at.first <= at.last:
                raise ArchiveDamaged(f"segment {chain[-1].file()} of {account_id} names no valid predecessor")
        return chain[::-1]

    def _get(self, account_id: str, segment: SegmentName) -> bytes:
        try:
            return self.storage.get(self.path(account_id, segment))
        except SegmentMissing:
            raise ArchiveDamaged(f"segment {segment.file()} of {account_id} was listed but cannot be found") \
                from None

    def _read(self, account_id: str, after: int, head: SegmentName, limit: int | None) -> list[RecordedEvent]:
        through = head.last
        committed = self.committed(account_id, head)
        wanted = through - after if limit is None else min(limit, through - after)
        events: list[RecordedEvent] = []
        need = after + 1
        while len(events) < wanted:
            holding = [s for s in committed if s.first <= need <= s.last]
            if not holding:
                raise ArchiveDamaged(f"no segment holds version {need} of {account_id}")
            segment = holding[0]
            events += decode_segment(account_id, segment, self._get(account_id, segment))[need - segment.first:]
            need = segment.last + 1
        return events[:wanted]


def open_archive(url: str | None, key_prefix: str, **client_options: Any) -> Archive | None:
    """The archive ``url`` names (``ARCHIVE_URL``), or None when unset. ``client_options`` go to the S3 client."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme == "file":
        from shared.file_archive import FileStorage

        return Archive(FileStorage(parts.path), key_prefix)
    if parts.scheme == "s3":
        from shared.s3_archive import S3Storage

        return Archive(S3Storage(parts.netloc, parts.path.strip("/"), **client_options), key_prefix)
    raise ValueError(f"no archive storage for scheme {parts.scheme!r}")
