"""``python -m projector [run|status|parked list|parked replay|rebuild]``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from projector import health, maintenance
from projector.consumer import PartitionConsumer
from projector.read_model import ReadModel, connect_mongo
from projector.worker import Projector
from shared import logs
from shared.config import ConfigError, ProjectorSettings, Settings, load_projector_settings, load_settings
from shared.keys import KeySpace
from shared.redis_client import build_client


def build(settings: Settings, projector_settings: ProjectorSettings) -> tuple[PartitionConsumer, ReadModel]:
    # A blocking XREADGROUP holds the socket for block_ms, so the read timeout must outlast it.
    timeout = settings.redis_timeout_seconds + projector_settings.block_ms / 1000
    client = build_client(dataclasses.replace(settings, redis_timeout_seconds=timeout))
    consumer = PartitionConsumer(client, KeySpace(settings.key_prefix, settings.partitions),
                                 projector_settings.group, projector_settings.consumer)
    model = ReadModel(connect_mongo(projector_settings), projector_settings.mongodb_database,
                      projector_settings.mongodb_collection, projector_settings.timestamps_kept)
    return consumer, model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m projector", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="project continuously (the default)")
    commands.add_parser("status", help="per partition: length, lag, pending, oldest pending age, parked")
    parked = commands.add_parser("parked", help="inspect or replay parked (dead-letter) events")
    parked_commands = parked.add_subparsers(dest="parked_command", required=True)
    listing = parked_commands.add_parser("list", help="list parked events with their errors")
    listing.add_argument("--partition", type=int, action="append")
    replay = parked_commands.add_parser("replay", help="apply parked events again (after a fix)")
    replay.add_argument("--partition", type=int, action="append")
    replay.add_argument("--id", action="append", help="a parked id or original entry id (repeatable)")
    show = commands.add_parser("show", help="print an account's read-model document")
    show.add_argument("account_id")
    rebuild = commands.add_parser("rebuild", help="rebuild the read model from the logs and swap it in")
    rebuild.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    try:
        settings, projector_settings = load_settings(), load_projector_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    consumer, model = build(settings, projector_settings)

    if args.command == "status":
        return _status(consumer)
    if args.command == "show":
        document = model.find(args.account_id)
        if document is None:
            print(f"{args.account_id}: not in the read model (yet)", file=sys.stderr)
            return 1
        print(json.dumps(document, indent=2, default=str))
        return 0
    if args.command == "parked" and args.parked_command == "list":
        return _list_parked(consumer, args.partition)
    if args.command == "parked":
        report = maintenance.replay_parked(consumer, model, args.partition, set(args.id) if args.id else None)
        for entry_id in report.replayed:
            print(f"replayed {entry_id}")
        for entry_id, error in report.remaining:
            print(f"still parked {entry_id}: {error}")
        return 0 if not report.remaining else 1
    if args.command == "rebuild":
        done = maintenance.rebuild(consumer, model, projector_settings.timestamps_kept, not args.no_progress)
        print(f"rebuilt {done.accounts} accounts from {done.events} events in {done.seconds:.1f}s "
              f"({done.refused} refused, {done.caught_up} applied while catching up)")
        return 0
    return _run(consumer, model, projector_settings)


def _run(consumer: PartitionConsumer, model: ReadModel, settings: ProjectorSettings) -> int:
    projector = Projector(consumer, model, settings)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        projector.stop()  # the current batch finishes (write, then ack) and the loop exits

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = None
    if settings.health_port:
        server = health.serve(projector.health, settings.health_port, max(10.0, 3 * settings.block_ms / 1000))
    try:
        projector.run()
    finally:
        if server is not None:
            server.shutdown()
    return 0


def _status(consumer: PartitionConsumer) -> int:
    rows = consumer.status()
    print(f"group {consumer.group!r}")
    print(f"{'partition':>9} {'length':>9} {'lag':>9} {'pending':>8} {'oldest pending':>15} {'parked':>7} "
          f"{'consumers':>9}")
    for row in rows:
        lag = "unknown" if row.lag is None else str(row.lag)
        oldest = "-" if row.oldest_pending_age_s is None else f"{row.oldest_pending_age_s:.1f}s"
        print(f"{row.partition:>9} {row.length:>9} {lag:>9} {row.pending:>8} {oldest:>15} {row.parked:>7} "
              f"{row.consumers:>9}")
    known = [r.lag for r in rows if r.lag is not None]
    print(f"{'total':>9} {sum(r.length for r in rows):>9} {sum(known):>9} {sum(r.pending for r in rows):>8} "
          f"{'':>15} {sum(r.parked for r in rows):>7}")
    return 0


def _list_parked(consumer: PartitionConsumer, partitions: list[int] | None) -> int:
    entries = consumer.parked(partitions)
    for entry in entries:
        account = entry.fields.get(b"account_id", b"?").decode()
        version = entry.fields.get(b"version", b"?").decode()
        kind = entry.fields.get(b"type", b"?").decode()
        print(f"p{entry.partition} {entry.parked_id} original={entry.original_id} account={account} "
              f"version={version} type={kind} deliveries={entry.deliveries} error={entry.error}")
    print(f"{len(entries)} parked")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
