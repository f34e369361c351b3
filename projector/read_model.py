"""The read model port: what the projector asks of the database that serves queries, and the one definition of
what it keeps there. ``mongo_read_model.MongoReadModel`` implements it on MongoDB; ``tests/support`` holds an
in-memory fake; ``tests/contract/test_read_model_contract.py`` runs one suite on both (and on a real MongoDB).

One document per account::

    {_id: "alice", balance_minor: 0, balance: "0.00", version: 3, owner: {iss, sub} | null,
     event_ids: [ids of the latest events, oldest first; the last is version 3's],
     timestamps: [partition-log ids of the latest events delivered through the log],
     partition: 7, log_ms: <int>, log_seq: <int>,     (the last log entry applied, for the self-checks)
     created_at: <date>, updated_at: <date>}

Money is kept as integer minor units (int64 on MongoDB), exactly as the write side keeps it: exact, summed and
compared by any query without conversions, and the same number a client's amount became. ``balance`` is the
display string beside it. In the same collection, one checkpoint per partition and group, whose ``_id``
starts with "_", which no account id can, and which carries ``kind: "checkpoint"``::

    {_id: "_checkpoint.projector.p7", kind: "checkpoint", group, partition, entry_id, event_id, owner, updated_ms}

and notes (``kind: "note"``): ``_note.store``, the event store it was projected from; ``_note.verify``.

Beside it, the ``<collection>_transactions`` collection: see ``statements.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from projector.projection import AccountWrite, Current
from projector.statements import Transaction
from shared.account import Account
from shared.money import format_minor
from shared.principal import Owner
from shared.read_model_layout import checkpoint_id
from shared.validation import ACCOUNT_ID_PATTERN

Document = dict[str, Any]
_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


class MalformedDocument(Exception):
    """A document in the collection is not what the projector writes there (edited by hand, or written by
    something else): reported by what it is, never trusted. ``detail`` names it in one line."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Checkpoint:
    partition: int
    entry_id: str
    event_id: str
    owner: str
    #: Wall-clock time of the last move, epoch milliseconds.
    updated_ms: int | None


@dataclass(frozen=True, slots=True)
class CheckpointWrite:
    partition: int
    entry_id: str
    event_id: str
    #: The entry the checkpoint must still hold for this move to happen (None: set it unconditionally). A
    #: checkpoint that is not where its owner left it was wiped, restored or rebuilt under it.
    expected: str | None = None


@dataclass(frozen=True, slots=True)
class WriteResult:
    #: Accounts now at (or past) their target version.
    applied: set[str]
    #: Per-account errors that are not outages (a document the database refuses).
    refused: dict[str, str]
    #: False when a guarded checkpoint was not where its owner expected it.
    checkpoints_held: bool = True


@dataclass(frozen=True, slots=True)
class Repair:
    """An account's document as its stream says it should be (``state`` None: the account does not exist)."""

    account_id: str
    state: Account | None
    event_ids: list[str]
    partition: int
    position: tuple[int, int]
    #: Every transaction of the account's stream: they replace the ones the read model holds.
    transactions: Sequence[Transaction] = ()


class ReadModel(Protocol):
    """What the projector and its operator tools need of the read model. Every implementation passes
    ``tests/contract/test_read_model_contract.py``; each raises ``ReadModelUnavailable`` for an outage."""

    @property
    def name(self) -> str: ...  # the collection's

    def describe(self) -> str:
        """Where it lives, for a person (server, database, collection; never a password)."""
        ...

    def ping(self) -> None: ...

    def current(self, account_ids: Iterable[str]) -> dict[str, Current]:
        """What the read model holds for these accounts (those it has), a malformed document marked so."""
        ...

    def write(self, writes: Sequence[AccountWrite], checkpoints: Sequence[CheckpointWrite] = (),
              repairs: Sequence[Repair] = ()) -> WriteResult:
        """Apply ``writes`` (each only where the document is at its expected version) and ``repairs``
        (unconditionally), then move ``checkpoints``."""
        ...

    def checkpoint(self, partition: int) -> Checkpoint | None:
        """The partition's checkpoint; ``MalformedDocument`` if what stands under its id is not one."""
        ...

    def create_checkpoint(self, partition: int) -> None:
        """A checkpoint at the log's beginning, replacing whatever stood under its id."""
        ...

    def applied_after(self, partition: int, position: tuple[int, int]) -> list[str]:
        """Accounts of ``partition`` whose last applied log entry lies after ``position``."""
        ...

    def find(self, account_id: str) -> Document | None: ...

    def transactions(self, account_id: str) -> list[Document]: ...  # the account's, by version

    def put_transactions(self, transactions: Iterable[Transaction]) -> None: ...  # each is idempotent

    def missing_transactions(self, wanted: set[tuple[str, int]]) -> set[tuple[str, int]]: ...  # (account, version)

    def ensure_indexes(self) -> None:  # those of ``read_model_layout``: cheap when they exist
        ...

    def note(self, name: str) -> Document | None:
        """A note of the projector's own (whose event store this is, the last verify); never an account."""
        ...

    def write_note(self, name: str, fields: Document) -> None: ...

    def documents(self) -> dict[str, Document]:
        """Every document that is not a checkpoint, by ``_id``."""
        ...

    def sibling(self, name: str) -> ReadModel:
        """Another collection beside this one (a rebuild builds into one)."""
        ...

    def recreate(self) -> None: ...  # drops everything in it

    def insert(self, documents: Iterable[Document]) -> int: ...

    def replace_with(self, built: ReadModel) -> None:
        """Make ``built``'s documents this one's, never leaving it empty for a reader, then drop ``built``."""
        ...


def document(state: Account, event_ids: list[str], log_ids: list[str], partition: int,
             position: tuple[int, int]) -> Document:
    """An account's document (plain Python values; an adapter stores them in its own types)."""
    return {
        "_id": state.id,
        "balance_minor": state.balance,
        "balance": format_minor(state.balance),
        "version": state.version,
        "owner": owner_document(state.owner),
        "event_ids": event_ids,
        "timestamps": log_ids,
        "partition": partition,
        "log_ms": position[0],
        "log_seq": position[1],
        "created_at": timestamp(state.opened_at),
        "updated_at": timestamp(state.updated_at),
    }


def owner_document(owner: Owner | None) -> Document | None:
    """The owner as queries filter on it: {iss, sub}, or None for an account nobody owns."""
    return None if owner is None else {"iss": owner.issuer, "sub": owner.subject}


def timestamp(iso: str | None) -> datetime | None:
    return None if iso is None else datetime.fromisoformat(iso.replace("Z", "+00:00"))


def owner_of(doc: Document) -> Owner | None:
    stored = doc.get("owner")
    if isinstance(stored, dict) and isinstance(stored.get("iss"), str) and isinstance(stored.get("sub"), str):
        return Owner(stored["iss"], stored["sub"])
    return None


def document_state(doc: Document) -> Account:
    """The account a document describes; ``MalformedDocument`` if it is not one the projector wrote."""
    def iso(value: object) -> str | None:
        return value.isoformat() if isinstance(value, datetime) else None

    account_id, balance, version = doc.get("_id"), doc.get("balance_minor", 0), doc.get("version", 0)
    if (not isinstance(account_id, str) or not ACCOUNT_ID_PATTERN.fullmatch(account_id)
            or not isinstance(balance, int) or isinstance(balance, bool) or not isinstance(version, int)
            or version < 0 or not isinstance(doc.get("event_ids", []), list)):
        raise MalformedDocument(f"document {str(account_id)[:80]!r} is not an account document the projector "
                                "wrote")
    return Account(account_id, int(balance), version, iso(doc.get("created_at")), iso(doc.get("updated_at")),
                   owner_of(doc))


def current_of(doc: Document) -> Current:
    try:
        return Current(document_state(doc), tuple(doc.get("event_ids") or ()))
    except MalformedDocument as exc:  # planned as a divergence: repaired from the account's stream
        return Current(Account(str(doc["_id"])), malformed=exc.detail)


def note_id(name: str) -> str:
    return f"_note.{name}"


def note_document(name: str, fields: Document) -> Document:
    return {**fields, "_id": note_id(name), "kind": "note", "name": name}


def checkpoint_of(doc: Document | None, group: str, partition: int) -> Checkpoint | None:
    """The checkpoint a document holds; ``MalformedDocument`` if it is not one."""
    if doc is None:
        return None
    entry_id, event_id, owner, updated = (doc.get(k) for k in ("entry_id", "event_id", "owner", "updated_ms"))
    if (doc.get("kind") != "checkpoint" or not isinstance(entry_id, str) or not _ENTRY_ID.fullmatch(entry_id)
            or not isinstance(event_id, str | None) or not isinstance(owner, str | None)
            or not (updated is None or isinstance(updated, int))):
        raise MalformedDocument(f"the checkpoint of partition {partition} ({checkpoint_id(group, partition)}) "
                                "is not a checkpoint document")
    return Checkpoint(partition, entry_id, event_id or "", owner or "", updated)


def checkpoint_document(group: str, owner: str, partition: int, entry_id: str, event_id: str,
                        updated_ms: int) -> Document:
    return {"_id": checkpoint_id(group, partition), "kind": "checkpoint", "group": group, "partition": partition,
            "entry_id": entry_id, "event_id": event_id, "owner": owner, "updated_ms": updated_ms}
