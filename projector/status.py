"""What ``python -m projector status`` reports, per partition, and the problems that make it exit non-zero.

Lag is counted from the read model's checkpoint, not from the consumer group: a group that has acknowledged
everything says nothing about a read model that was wiped, restored or left behind by a Redis that lost
writes. Each row also says who owns the partition (its lease), what is pending and for how long, when the
read model last moved, and whether it disagrees with the log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from projector import recovery
from projector.dead_letters import DeadLetters, ParkedEntry
from projector.leases import PartitionLeases
from projector.partition_log import PartitionLog
from projector.read_model import Document, ReadModel
from projector.store_identity import Identities
from shared.redis_client import NodeMemory

_LAG_CAP = 10_000


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    partition: int
    owner: str | None
    length: int
    #: Log entries after the read model's checkpoint (counted up to _LAG_CAP).
    lag: int
    #: How long the oldest of those has waited (from its entry id's timestamp); None when there are none.
    lag_age_s: float | None
    pending: int
    oldest_pending_age_s: float | None
    last_progress_age_s: float | None
    checkpoint: str
    log_end: str
    parked: int
    quarantined: int
    diverged: str | None
    problems: list[str] = field(default_factory=list)
    #: Accounts waiting for the archiver (ARCHIVE_URL): a number that keeps growing means it is not running.
    archive_due: int = 0


def status(partition_log: PartitionLog, dead_letters: DeadLetters, leases: PartitionLeases, model: ReadModel,
           stall_s: float) -> list[PartitionStatus]:
    rows = []
    now_ms = time.time() * 1000
    for partition in range(partition_log.keys.partitions):
        view = leases.view(partition)
        finding = recovery.compare(partition_log, model, partition)
        info = partition_log.group_info(partition)
        lag = partition_log.count_after(partition, finding.keep, _LAG_CAP)
        first = partition_log.scan(partition, finding.keep, "+", 1) if lag else []
        lag_age = max(0.0, (now_ms - int(first[0].entry_id.split("-")[0])) / 1000) if first else None
        oldest_id = partition_log.oldest_pending(partition) if info and info.pending else None
        oldest = None if oldest_id is None else max(0.0, (now_ms - int(oldest_id.split("-")[0])) / 1000)
        updated = finding.checkpoint.updated_ms if finding.checkpoint else None
        progress = None if updated is None else max(0.0, (now_ms - updated) / 1000)
        parked, quarantined = len(dead_letters.parked([partition])), len(dead_letters.quarantined(partition))
        diverged = _divergence(finding)
        row = PartitionStatus(partition, view.owner, partition_log.length(partition), lag, lag_age,
                              info.pending if info else 0, oldest, progress, finding.keep,
                              partition_log.end(partition), parked, quarantined, diverged,
                              archive_due=partition_log.archive_due(partition))
        row.problems.extend(_problems(row, stall_s))
        rows.append(row)
    return rows


@dataclass(frozen=True, slots=True)
class Totals:
    """The partitions' figures for the deployment as a whole (``status``'s last line, ``/metrics``, EMF)."""

    lag: int
    #: The age of the oldest entry any read model lacks (0: none).
    lag_age_s: float
    pending: int
    parked: int
    quarantined: int
    unowned: int


def totals(rows: list[PartitionStatus]) -> Totals:
    return Totals(sum(r.lag for r in rows), max((r.lag_age_s or 0.0 for r in rows), default=0.0),
                  sum(r.pending for r in rows), sum(r.parked for r in rows), sum(r.quarantined for r in rows),
                  sum(r.owner is None for r in rows))


def _divergence(finding: recovery.Finding) -> str | None:
    if finding.malformed:
        return f"{finding.malformed} (the projector replaces it and re-projects the partition)"
    if finding.trimmed:
        return "log trimmed past the read model's checkpoint (the projector re-synchronises it from the streams)"
    if finding.redis_behind:
        return f"Redis lost entries the read model applied ({len(finding.suspects)} accounts to repair)"
    if finding.mongo_behind:
        return f"read model behind its log by {finding.behind_by} acknowledged entries"
    return None


def _problems(row: PartitionStatus, stall_s: float) -> list[str]:
    problems = []
    if row.diverged:
        problems.append(row.diverged)
    if row.owner is None and (row.lag or row.pending):
        problems.append("no projector owns it, and it has work")
    elif row.lag and row.last_progress_age_s is not None and row.last_progress_age_s > stall_s:
        problems.append(f"no progress for {row.last_progress_age_s:.0f}s with {row.lag} entries to go")
    if row.parked or row.quarantined:
        problems.append(f"{row.parked} parked entries, {row.quarantined} quarantined accounts: see `parked list`")
    return problems


@dataclass(frozen=True, slots=True)
class StoreReport:
    """What holds for the read model as a whole: whose event store it is, and what the last verify found
    (the per-partition checks compare checkpoints with logs, and cannot see a document wrong in between)."""

    lines: list[str]
    problems: list[str]


#: Redis memory from this share of ``maxmemory`` on is a problem: with ``noeviction`` every write then fails.
MEMORY_PROBLEM_SHARE = 0.9


def store_report(identities: Identities, last_verify: Document | None,
                 memory: list[NodeMemory] | None = None) -> StoreReport:
    lines, problems = [], []
    for node in memory or []:
        share = node.used_share
        if share is not None and share >= MEMORY_PROBLEM_SHARE:
            problems.append(f"redis memory {node.describe()}: writes fail (503 store-full) once it is full")
        else:
            lines.append(f"redis memory {node.describe()}")
    mismatch = identities.problem()
    if mismatch is None:
        lines.append(f"event store {identities.redis} (the read model's own)")
    elif identities.read_model is None and identities.redis is None:
        lines.append("event store not named yet (the projector names it when it starts)")
    else:
        problems.append(mismatch)
    if last_verify is None:
        lines.append("verify: never run on this read model")
    else:
        when = datetime.fromtimestamp(int(last_verify.get("at_ms", 0)) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        differ, repaired = int(last_verify.get("differences", 0)), int(last_verify.get("repaired", 0))
        found = (f"last verify {when}: {last_verify.get('accounts', 0)} accounts, {differ} differed"
                 + (f", {repaired} repaired" if repaired else ""))
        if differ > repaired:
            first = "; ".join(str(d) for d in last_verify.get("first") or [])
            problems.append(f"{found} ({first}); run `verify` again once fixed")
        else:
            lines.append(found)
    return StoreReport(lines, problems)


def render(rows: list[PartitionStatus], group: str, store: StoreReport | None = None) -> str:
    lines = [f"group {group!r}",
             f"{'partition':>9} {'owner':<22} {'lag':>7} {'pending':>7} {'oldest':>8} {'progress':>9} "
             f"{'checkpoint':>16} {'log end':>16} {'parked':>6}  state"]
    for r in rows:
        lag = f">{_LAG_CAP}" if r.lag >= _LAG_CAP else str(r.lag)
        lines.append(
            f"{r.partition:>9} {(r.owner or '-')[:22]:<22} {lag:>7} {r.pending:>7} {_age(r.oldest_pending_age_s):>8} "
            f"{_age(r.last_progress_age_s):>9} {r.checkpoint:>16} {r.log_end:>16} {r.parked:>6}  "
            f"{'; '.join(r.problems) or 'ok'}")
    troubled = [r for r in rows if r.problems]
    store = store or StoreReport([], [])
    lines += store.lines + [f"PROBLEM: {problem}" for problem in store.problems]
    verdict = ([f"{len(troubled)} partitions need attention"] if troubled else []) + (
        ["the read model as a whole needs attention"] if store.problems else [])
    total = totals(rows)
    lines.append(f"total lag {total.lag}, pending {total.pending}, parked {total.parked}; "
                 + ("; ".join(verdict) or "all partitions ok"))
    return "\n".join(lines)


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


def render_parked(entries: list[ParkedEntry]) -> str:
    lines = []
    for entry in entries:
        fields = entry.entry_fields
        lines.append(f"p{entry.partition} {entry.parked_id} original={entry.original_id} "
                     f"account={_field(fields, b'account_id')} version={_field(fields, b'version')} "
                     f"type={_field(fields, b'type')} deliveries={entry.deliveries} error={entry.error}")
    lines.append(f"{len(entries)} parked")
    return "\n".join(lines)


def _field(fields: dict[bytes, bytes], name: bytes) -> str:
    return fields.get(name, b"?").decode(errors="replace")
