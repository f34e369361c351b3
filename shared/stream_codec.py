"""The stream entry format: the one definition of which fields an event is stored as, and in what order.

``FIELDS`` drives everything that touches an entry: ``encode`` (the append script's arguments),
``decode_flat`` (script and raw XRANGE replies, read by position) and ``decode_mapping`` (replies that
redis-py parsed into dicts). ``redis-cli XRANGE`` shows the fields in this order.

The version comes first. Only the append script knows the version an event gets, so ``encode`` gives the
values of the other fields, and the script (whose list of names is filled in from ``FIELDS``, see
``lua_fields``) pairs them with their names and puts the version in front.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import orjson

from shared.errors import CorruptHistory
from shared.events import NewEvent, RecordedEvent

FIELDS: Final = ("version", "type", "account_id", "event_id", "time", "schema", "data", "meta")

_NAMES: Final = [name.encode() for name in FIELDS]
# Positions of each value in a flat [name, value, name, value, ...] entry.
_VERSION, _TYPE, _ACCOUNT, _EVENT_ID, _TIME, _SCHEMA, _DATA, _META = (2 * i + 1 for i in range(len(FIELDS)))


def encode(event: NewEvent) -> list[bytes | str | int]:
    """The values of ``FIELDS`` after the version, in that order (the append script adds the names;
    tests/integration/test_partition_log.py reads stored entries back name by name)."""
    return [event.type, event.account_id, event.event_id, event.recorded_at, event.schema,
            orjson.dumps(event.data), event.metadata.to_json()]


def lua_fields() -> str:
    """``FIELDS`` as the items of a Lua table, for the append script's list of names."""
    return ", ".join(f"'{name}'" for name in FIELDS)


def decode_entries(entries: Iterable[Any] | None) -> list[RecordedEvent]:
    """Decode an XRANGE/XREADGROUP reply: (entry id, fields) pairs, the fields as a flat list or a dict."""
    if entries is None:
        return []
    return [decode_mapping(fields) if type(fields) is dict else decode_flat(fields) for _, fields in entries]


def decode_flat(flat: list[bytes]) -> RecordedEvent:
    """One entry as Redis returns it: ``[name, value, ...]``. Read by position when the names are ours."""
    if flat[0::2] != _NAMES:  # an entry written some other way: fall back to reading by name
        return decode_mapping(dict(zip(flat[::2], flat[1::2], strict=True)))
    try:
        return RecordedEvent(flat[_ACCOUNT].decode(), int(flat[_VERSION]), flat[_TYPE].decode(),
                             orjson.loads(flat[_DATA]), flat[_EVENT_ID].decode(), flat[_TIME].decode(),
                             int(flat[_SCHEMA]), flat[_META].decode())
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise CorruptHistory(f"unreadable stream entry: {type(exc).__name__}: {exc}") from exc


def decode_mapping(fields: Mapping[bytes, bytes]) -> RecordedEvent:
    """One entry as a name → value mapping (from an account stream, a partition log or a parked stream)."""
    version, event_type, account_id, event_id, time, schema, data, meta = _NAMES
    try:
        return RecordedEvent(
            account_id=fields[account_id].decode(),
            version=int(fields[version]),
            type=fields[event_type].decode(),
            data=orjson.loads(fields[data]),
            event_id=fields[event_id].decode(),
            recorded_at=fields[time].decode(),
            schema=int(fields[schema]),
            metadata_json=fields[meta].decode(),
        )
    except (KeyError, ValueError, orjson.JSONDecodeError) as exc:
        raise CorruptHistory(f"unreadable stream entry: {type(exc).__name__}: {exc}") from exc
