"""New log entries, as soon as they are appended: one thread per followed partition, blocked in ``XREADGROUP
... BLOCK`` on that partition's log, hands what it reads to the loop and wakes it.

One thread per partition, not one read across them: a cluster refuses a command whose keys live in different
slots, and every partition's log has a slot of its own, so only a per-partition read keeps per-partition
ownership and runs on a cluster too. A thread holds at most one batch: it reads again only once the loop has
taken the last one, so nothing piles up in memory while the loop is busy (the entries wait in Redis, where
they belong). Entries a thread read are pending under this consumer until acknowledged: whatever becomes of
the thread, they are re-read after an outage or claimed by the partition's next owner.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from projector.projection import LogEntry
from projector.subscription import ConsumerGroup

log = logging.getLogger("ledgerstream.projector")


class _Reader(threading.Thread):
    def __init__(self, group: ConsumerGroup, partition: int, count: int, block_ms: int, wake: threading.Event) -> None:
        super().__init__(name=f"fetch-p{partition}", daemon=True)
        self.partition = partition
        self._group, self._count, self._block_ms, self._wake = group, count, block_ms, wake
        self._lock = threading.Lock()
        self._may_read = threading.Event()
        self._may_read.set()
        self.stopping = threading.Event()
        self._batch: list[LogEntry] = []
        self._error: Exception | None = None

    def run(self) -> None:
        while not self.stopping.is_set():
            if not self._may_read.wait(0.2):
                continue
            try:
                found = self._group.read(self.partition, self._count, None, self._block_ms)
            except Exception as exc:  # reported to the loop, which decides (an outage, a vanished group)
                with self._lock:  # paused before it is published: the loop's take may re-arm it at once
                    self._may_read.clear()
                    self._error = exc
                self._wake.set()
                continue
            if found:
                with self._lock:
                    self._may_read.clear()
                    self._batch = found
                self._wake.set()

    def take(self) -> tuple[list[LogEntry], Exception | None]:
        """The batch (or error) this reader holds; it reads again at once after handing over a batch."""
        with self._lock:
            batch, error = self._batch, self._error
            self._batch, self._error = [], None
            if batch:
                self._may_read.set()
        return batch, error


class Fetcher:
    def __init__(self, group: ConsumerGroup, count: int, block_ms: int) -> None:
        self._group, self._count, self._block_ms = group, count, block_ms
        #: Set whenever a reader has something for the loop.
        self.wake = threading.Event()
        self._readers: dict[int, _Reader] = {}
        self._exiting: list[_Reader] = []

    def follow(self, partitions: Iterable[int]) -> None:
        """Read new entries of exactly these partitions from now on."""
        wanted = set(partitions)
        for partition in [p for p in self._readers if p not in wanted]:
            reader = self._readers.pop(partition)
            reader.stopping.set()
            self._exiting.append(reader)
        self._exiting = [r for r in self._exiting if r.is_alive()]
        busy = {r.partition for r in self._exiting}
        for partition in wanted - set(self._readers) - busy:  # one reader per partition, ever at a time
            reader = self._readers[partition] = _Reader(self._group, partition, self._count, self._block_ms,
                                                        self.wake)
            reader.start()

    def idle(self, partition: int) -> bool:
        """No reader of ``partition`` is running or still finishing its last read: only then may the loop read
        the partition's pending entries itself (a finishing read may still deliver entries to this consumer,
        and a pending read that ran before it would miss them)."""
        self._exiting = [r for r in self._exiting if r.is_alive()]
        return partition not in self._readers and all(r.partition != partition for r in self._exiting)

    def take(self) -> tuple[list[LogEntry], dict[int, Exception]]:
        """What the readers have read since the last call (each reader reading again at once), and the errors
        they met (those readers are dropped: the loop decides when to read that partition again)."""
        self.wake.clear()
        entries: list[LogEntry] = []
        errors: dict[int, Exception] = {}
        for partition, reader in self._readers.items():
            batch, error = reader.take()
            if error is not None:
                errors[partition] = error
            entries += batch
        for partition in errors:
            self.drop(partition)
        return entries, errors

    def drop(self, partition: int) -> None:
        """Stop reading ``partition`` (its reader met an error); ``follow`` starts a new reader when asked."""
        reader = self._readers.pop(partition, None)
        if reader is not None:
            reader.stopping.set()
            self._exiting.append(reader)

    def quiesce(self, partitions: Iterable[int], timeout: float) -> None:
        """Stop reading ``partitions`` and wait for their readers to finish: a read still blocked when the
        partition's lease is released would take new entries as this consumer, and its next owner would see
        them only when it claims another's pending entries."""
        for partition in partitions:
            self.drop(partition)
        for reader in self._exiting:
            reader.join(timeout)

    def stop(self, timeout: float) -> None:
        self.follow(())
        for reader in self._exiting:
            reader.join(timeout)
