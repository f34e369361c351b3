"""Which partitions this replica works on: it takes the ones its leases win (claiming the previous owner's
pending entries at once), hands back what is above its fair share, drops what it lost, and picks up entries
a previous owner read after losing its lease. The leases themselves are ``leases.py``'s; this is what owning a
partition means for the loop's state."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from projector.dead_letters import DeadLetters
from projector.leases import PartitionLeases
from projector.partition_log import GroupMissing
from projector.partitions import Held, Outages, Partition, Retries, describe
from projector.subscription import ConsumerGroup
from shared.errors import StoreUnavailable

log = logging.getLogger("ledgerstream.projector")
#: Runs an action on a partition's node under the loop's outage guard.
Guard = Callable[[int, Callable[[], Any]], Any]


class Ownership:
    def __init__(self, group: ConsumerGroup, dead_letters: DeadLetters, leases: PartitionLeases,
                 partitions: dict[int, Partition], outages: Outages, guard: Guard,
                 quiesce: Callable[[list[int]], None] = lambda numbers: None,
                 clock: Callable[[], float] = time.monotonic,
                 on_takeover: Callable[[int], None] = lambda number: None) -> None:
        """``quiesce`` stops reading partitions about to be handed back, before their leases go;
        ``on_takeover`` hears of each partition taken from a replica that did not hand it back."""
        self._on_takeover = on_takeover
        self._group, self._dead_letters, self._leases = group, dead_letters, leases
        self._partitions, self._outages, self._guard, self._clock = partitions, outages, guard, clock
        self._quiesce = quiesce

    def tick(self) -> None:
        """Heartbeat, renew, rebalance."""
        self._leases.heartbeat()
        for number in self._leases.renew():
            log.warning("lost the lease of partition %d; another replica owns it now", number,
                        extra={"fields": {"partition": number, "lease": "lost"}})
            self._partitions.pop(number, None)
        excess = self._leases.excess()
        if excess:
            self._quiesce(excess)
        for number in excess:
            # Logged before the release, so no log line can show two owners of one partition at once.
            log.info("handing partition %d back for rebalancing", number,
                     extra={"fields": {"partition": number, "lease": "released"}})
            self.hand_back(number)
        for number in self._leases.fill():
            self._take(number)
        for number, partition in list(self._partitions.items()):
            if self._outages.reachable(number):
                self._guard(number, partial(self._claim_foreign, partition))

    def _take(self, number: int) -> None:
        lease = self._leases.owned[number].value
        try:
            taken = self._group.take_over(number)
            quarantine = self._dead_letters.quarantined(number)
        except (StoreUnavailable, GroupMissing) as exc:
            log.warning("cannot take partition %d over yet: %s", number, describe(exc))
            self._leases.release(number)
            if isinstance(exc, StoreUnavailable):
                self._outages.mark_down(number, exc)
            return
        self._partitions[number] = Partition(number, lease, retries=Retries(quarantine=quarantine))
        log.info("took partition %d (claimed %d pending entries)", number, taken.claimed,
                 extra={"fields": {"partition": number, "lease": "acquired", "claimed": taken.claimed,
                                   "taken_over": taken.abandoned_by > 0}})
        if taken.abandoned_by:
            self._on_takeover(number)

    def hand_back(self, number: int) -> None:
        self._partitions.pop(number, None)
        with contextlib.suppress(StoreUnavailable, GroupMissing):  # the next owner removes us once it claimed
            self._group.leave(number)
        self._leases.release(number)

    def hand_back_all(self) -> None:
        """Every partition, at once (no waiting for the leases to expire), and leave the group."""
        for number in list(self._partitions):
            log.info("handing partition %d back: stopping", number,
                     extra={"fields": {"partition": number, "lease": "released"}})
            self.hand_back(number)
        self._leases.release_all()
        self._leases.leave()

    def lost(self, number: int) -> None:
        """A fenced script found the lease gone: the partition is no longer ours to act on."""
        self._partitions.pop(number, None)
        self._leases.forget(number)

    def _claim_foreign(self, partition: Partition) -> None:
        ids = self._group.foreign_pending(partition.number)
        now = self._clock()
        for entry in self._group.claim(partition.number, ids):
            partition.retries.held[entry.entry_id] = Held(entry, 0, now, "claimed from a previous owner")
        if ids:
            self._group.drop_idle_consumers(partition.number)
