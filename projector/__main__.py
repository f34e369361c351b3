"""python -m projector [run | status | show ID | verify | parked list | parked replay | rebuild]

Keeps the MongoDB read model of the account streams up to date (run), and the commands to operate it.
Settings come from the environment (see the README); a command that cannot reach Redis or MongoDB says so in
one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from types import FrameType

from redis.exceptions import RedisClusterException

from projector import health, maintenance, status, verification
from projector.emf_reporter import EmfReporter
from projector.mongo_connection import MONGO_ERRORS, describe_mongo
from projector.partition_log import GroupMissing, stream_accounts
from projector.read_model import MalformedDocument
from projector.settings import ProjectorSettings, load_projector_settings
from projector.store_identity import ForeignStore
from projector.wiring import Wiring, wire
from shared import logs, tracing
from shared.config import ConfigError, load_settings
from shared.errors import StoreUnavailable
from shared.redis_client import UNAVAILABLE_ERRORS, describe_redis, memory
from shared.validation import ACCOUNT_ID_PATTERN

#: Redis out of reach, including a cluster client that found no seed to discover the topology from.
CLI_REDIS_DOWN: tuple[type[Exception], ...] = (StoreUnavailable, GroupMissing, RedisClusterException,
                                               *UNAVAILABLE_ERRORS)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m projector", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = root.add_subparsers(dest="command")
    commands.add_parser("run", help="project continuously (the default)")
    commands.add_parser("status", help="per partition: owner, lag, pending, progress, checkpoint, problems; "
                                       "exits 1 when something needs attention")
    show = commands.add_parser("show", help="print an account's read-model document")
    show.add_argument("account_id")
    verify = commands.add_parser("verify", help="compare every document with its account stream; exits 1 "
                                                "on any difference")
    verify.add_argument("--repair", action="store_true",
                        help="rewrite every document that differs from its stream, and delete account documents "
                             "that have no stream (refused unless Redis is the event store the read model was "
                             "projected from)")
    verify.add_argument("--deep", action="store_true",
                        help="also check every account's snapshot and version record in Redis against its whole "
                             "history, archive included")
    verify.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and scripts)")
    parked = commands.add_parser("parked", help="inspect or replay parked (dead-letter) events")
    parked_commands = parked.add_subparsers(dest="parked_command", required=True)
    listing = parked_commands.add_parser("list", help="list parked events with their errors")
    listing.add_argument("--partition", type=int, action="append", metavar="N",
                         help="only this partition (repeatable; default: all)")
    replay = parked_commands.add_parser("replay", help="apply parked events again (after a fix)")
    replay.add_argument("--partition", type=int, action="append", metavar="N",
                        help="only this partition (repeatable; default: all)")
    replay.add_argument("--id", action="append", help="a parked id or original entry id (repeatable)")
    rebuild = commands.add_parser("rebuild", help="rebuild the read model from the logs and swap it in")
    rebuild.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and scripts)")
    rebuild.add_argument("--adopt-store", action="store_true",
                         help="the read model was projected from another event store (or from none this "
                              "version recorded): rebuild it from this Redis, and record this Redis as its store")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings, projector_settings = load_settings(), load_projector_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    for number in getattr(args, "partition", None) or ():
        if not 0 <= number < settings.partitions:
            print(f"python -m projector: error: --partition {number} does not exist: partitions are 0 to "
                  f"{settings.partitions - 1} (LEDGER_PARTITIONS={settings.partitions})", file=sys.stderr)
            return 2
    redis_at, mongo_at = describe_redis(settings), describe_mongo(projector_settings)
    if args.command not in (None, "run"):  # a person reads this: say which stores they are looking at
        print(f"projector: {redis_at}; {mongo_at}", file=sys.stderr)
    if settings.tracing and args.command in (None, "run"):
        tracing.configure(settings.service_name or "ledgerstream-projector")
    try:
        wiring = wire(settings, projector_settings)
        return _command(args, wiring, projector_settings)
    except CLI_REDIS_DOWN as exc:
        print(f"projector: cannot reach {redis_at} ({type(exc).__name__}: {exc}); is it running, and is "
              "REDIS_URL right?", file=sys.stderr)
    except MalformedDocument as exc:
        print(f"projector: {exc.detail}", file=sys.stderr)
        return 1
    except ForeignStore as exc:
        print(f"projector: {exc.detail}", file=sys.stderr)
    except MONGO_ERRORS as exc:
        print(f"projector: cannot reach {mongo_at} ({type(exc).__name__}); is it running, and is MONGODB_URI "
              "right?", file=sys.stderr)
    except HealthPortBusy as exc:
        print(f"projector: {exc}", file=sys.stderr)
    return 2


def _command(args: argparse.Namespace, wiring: Wiring, settings: ProjectorSettings) -> int:
    if args.command == "status":
        rows = status.status(wiring.log, wiring.dead_letters, wiring.leases, wiring.model, settings.stall_seconds)
        store = status.store_report(wiring.identity.read(), wiring.model.note(verification.VERIFY_NOTE),
                                    memory(wiring.client))
        print(status.render(rows, settings.group, store))
        return 1 if store.problems or any(row.problems for row in rows) else 0
    if args.command == "show":
        return _show(args.account_id, wiring)
    if args.command == "verify":
        return _verify(args.repair, not args.no_progress, wiring, args.deep)
    if args.command == "parked" and args.parked_command == "list":
        chosen = args.partition or range(wiring.keys.partitions)
        print(status.render_parked(wiring.dead_letters.parked(chosen)))
        return 0
    if args.command == "parked":
        return _replay(args.partition, args.id, wiring)
    if args.command == "rebuild":
        if not args.adopt_store:
            wiring.identity.require_same("rebuild the read model")
        done = maintenance.rebuild(wiring.log, wiring.model, wiring.history,
                                   stream_accounts(wiring.client, wiring.keys), settings.timestamps_kept,
                                   not args.no_progress)
        print(f"rebuilt {done.accounts} accounts from {done.events} events in {done.seconds:.1f}s "
              f"({done.refused} refused, {done.caught_up} applied while catching up)")
        if args.adopt_store:
            print(f"the read model now belongs to event store {wiring.identity.adopt()}")
        return 0
    return _run(wiring, settings)


def _verify(repair: bool, progress: bool, wiring: Wiring, deep: bool = False) -> int:
    if repair:
        wiring.identity.require_same("repair the read model")
        if not any(stream_accounts(wiring.client, wiring.keys)) and wiring.model.documents():
            print("projector: refusing to repair: this Redis holds no account stream at all, so a repair would "
                  "delete every document of the read model; check REDIS_URL", file=sys.stderr)
            return 2
    report = verification.verify(wiring.keys, wiring.model, wiring.history,
                                stream_accounts(wiring.client, wiring.keys), repair, progress,
                                wiring.stored if deep else None)
    verification.record_verify(wiring.model, report)
    for line in report.differences[:20]:
        print(line)
    if len(report.differences) > 20:
        print(f"... and {len(report.differences) - 20} more")
    print(f"verified {report.accounts} accounts: {len(report.differences)} differ; total balance "
          f"{report.stream_total} in the streams, {report.model_total} in the read model (minor units)"
          + (f"; repaired {len(report.repaired)}" if repair else ""))
    return 0 if report.ok or report.all_repaired else 1


def _replay(partitions: list[int] | None, ids: list[str] | None, wiring: Wiring) -> int:
    wiring.identity.require_same("replay parked events into the read model")
    replayed = maintenance.replay_parked(wiring.dead_letters, wiring.model, wiring.history, partitions,
                                         set(ids) if ids else None)
    for entry_id in replayed.replayed:
        print(f"replayed {entry_id}")
    for entry_id, error in replayed.remaining:
        print(f"still parked {entry_id}: {error}")
    for account_id in replayed.released:
        print(f"released {account_id} from quarantine")
    unknown = sorted(set(ids or ()) - replayed.matched)
    for parked_id in unknown:
        print(f"no parked entry {parked_id!r} (see `parked list`)", file=sys.stderr)
    if not replayed.matched and not replayed.released and not unknown:
        print("nothing parked" + (f" in partitions {partitions}" if partitions else ""))
    return 0 if not replayed.remaining and not unknown else 1


def _show(account_id: str, wiring: Wiring) -> int:
    if not ACCOUNT_ID_PATTERN.fullmatch(account_id):
        print(f"{account_id[:80]!r} is not an account id (1-64 letters, digits, '.', '_' or '-', starting with a "
              "letter or digit)", file=sys.stderr)
        return 2
    document = wiring.model.find(account_id)
    if document is None:
        print(f"{account_id}: not in the read model (yet)", file=sys.stderr)
        return 1
    print(json.dumps(document, indent=2, default=_shown))
    return 0


def _shown(value: object) -> str:
    """Dates as UTC ISO 8601 with a Z, whatever the driver handed back (aware or naive UTC)."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return str(value)


class HealthPortBusy(Exception):
    """The health endpoint's address cannot be bound: said in one line, never a traceback."""


def _run(wiring: Wiring, settings: ProjectorSettings) -> int:
    projector = wiring.runner()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        projector.stop()  # the current batch finishes (write, then ack) and the loop exits

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = None
    if settings.health_port:
        try:
            server = health.serve(projector.health, settings.health_bind, settings.health_port,
                                  wiring.metrics(projector))
        except OSError as exc:
            raise HealthPortBusy(f"cannot serve /healthz on {settings.health_bind}:{settings.health_port}: "
                                 f"{exc.strerror} (another projector running here? set PROJECTOR_HEALTH_PORT to "
                                 "a free port, or 0 for none)") from exc
    reporter = EmfReporter(wiring.rows, wiring.emf_namespace).start() if wiring.emf_namespace else None
    archiver = wiring.archive_worker(projector)
    if archiver is not None:
        archiver.start()
    try:
        projector.run()
    finally:
        if archiver is not None:
            archiver.stop()
        if server is not None:
            server.shutdown()
        if reporter is not None:
            reporter.stop()
        tracing.shutdown()  # what is buffered goes out before the process does
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
