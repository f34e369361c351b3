"""Which event store a read model belongs to, so that nothing destructive is done to it on another's word.

The read model is derived from Redis, and the projector and its repairs delete or rewrite documents whenever
Redis says the read model is wrong. That is right for *its* Redis, and a disaster for any other: an empty
Redis reached by a mistyped URL, a second local stack, a Redis that restarted without its data. So each event
store has an identity, a random id written once under ``{<prefix>:global}:store-id``, and the read model
records the one it was projected from (its ``store`` note). A projector starts only where they agree (or
where the read model has none yet, which it then records), stops when Redis's changes under it, and the
destructive commands (``verify --repair``, ``rebuild``) refuse on a mismatch. ``rebuild --adopt-store`` is the
deliberate way to give a read model to another store.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import redis

from projector.partition_log import redis_errors
from projector.read_model import ReadModel
from shared.keys import KeySpace

NOTE = "store"


class ForeignStore(Exception):
    """The Redis reached is not the event store the read model was projected from (or has no identity)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Identities:
    redis: str | None
    read_model: str | None

    def problem(self) -> str | None:
        """Why the two must not be trusted together (None: they agree)."""
        if self.read_model is None:
            return ("the read model records no event store yet (a projector of this version records it when it "
                    "starts)")
        if self.redis is None:
            return (f"the read model was projected from event store {self.read_model}, but this Redis has no "
                    "store identity: it is empty, lost its data, or is not the Redis you meant")
        if self.redis != self.read_model:
            return (f"the read model was projected from event store {self.read_model}, but this Redis is event "
                    f"store {self.redis}")
        return None


class StoreIdentity:
    def __init__(self, client: redis.Redis, keys: KeySpace, model: ReadModel) -> None:
        self._client = client
        self._key = keys.store_identity()
        self._model = model

    def redis_identity(self) -> str | None:
        with redis_errors():
            found = self._client.get(self._key)
        return None if found is None else (found.decode() if isinstance(found, bytes) else str(found))

    def read(self) -> Identities:
        note = self._model.note(NOTE)
        recorded = note.get("identity") if note is not None else None
        return Identities(self.redis_identity(), recorded if isinstance(recorded, str) else None)

    def bind(self) -> str:
        """At a projector's start: the store it may project (naming it first if this Redis has no name and
        the read model none either); ``ForeignStore`` when the read model belongs to another."""
        found = self.read()
        if found.read_model is None:
            return self.adopt()
        problem = found.problem()
        if problem is not None:
            raise ForeignStore(problem + _ADVICE)
        return found.read_model

    def require_same(self, action: str) -> None:
        """Before a destructive step: ``ForeignStore`` unless both name the same store."""
        problem = self.read().problem()
        if problem is not None:
            raise ForeignStore(f"refusing to {action}: {problem}" + _ADVICE)

    def adopt(self) -> str:
        """Record this Redis's identity (naming it first if it has none) as the read model's store."""
        fresh = f"{time.strftime('%Y%m%d', time.gmtime())}-{secrets.token_hex(8)}"
        with redis_errors():
            self._client.set(self._key, fresh, nx=True)
        identity = self.redis_identity()
        assert identity is not None  # just written, or written by a racing projector first
        self._model.write_note(NOTE, {"identity": identity, "recorded_ms": int(time.time() * 1000)})
        return identity

    def confirm(self, bound: str | None) -> str:
        """The store a running projector projects: bound at its first turn, then checked on every lease tick
        (``ForeignStore`` when Redis restarted without its data, or the address now reaches another)."""
        if bound is None:
            self._model.ensure_indexes()  # the queries' indexes, before the first document (cheap when there)
            return self.bind()
        now = self.redis_identity()
        if now != bound:
            seen = "no store identity (it lost its data)" if now is None else f"event store {now}"
            raise ForeignStore(f"the Redis being projected changed under the projector: it was event store "
                               f"{bound}, it now holds {seen}" + _ADVICE)
        return bound


_ADVICE = (". Check REDIS_URL (and MONGODB_URI, MONGODB_DATABASE); if this Redis is now the event store on "
           "purpose, `python -m projector rebuild --adopt-store` rebuilds the read model from it")
