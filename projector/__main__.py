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
from types import FrameType

from redis.exceptions import RedisClusterException

from projector import health, maintenance, status
from projector.mongo_read_model import MONGO_ERRORS
from projector.partition_log import GroupMissing
from projector.read_model import MalformedDocument
from projector.settings import ProjectorSettings, load_projector_settings
from projector.wiring import Wiring, wire
from shared import logs
from shared.config import ConfigError, load_settings
from shared.errors import StoreUnavailable
from shared.redis_client import UNAVAILABLE_ERRORS
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
    verify.add_argument("--repair", action="store_true", help="rewrite every document that differs")
    verify.add_argument("--no-progress", action="store_true")
    parked = commands.add_parser("parked", help="inspect or replay parked (dead-letter) events")
    parked_commands = parked.add_subparsers(dest="parked_command", required=True)
    listing = parked_commands.add_parser("list", help="list parked events with their errors")
    listing.add_argument("--partition", type=int, action="append")
    replay = parked_commands.add_parser("replay", help="apply parked events again (after a fix)")
    replay.add_argument("--partition", type=int, action="append")
    replay.add_argument("--id", action="append", help="a parked id or original entry id (repeatable)")
    rebuild = commands.add_parser("rebuild", help="rebuild the read model from the logs and swap it in")
    rebuild.add_argument("--no-progress", action="store_true")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings, projector_settings = load_settings(), load_projector_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        wiring = wire(settings, projector_settings)
        return _command(args, wiring, projector_settings)
    except CLI_REDIS_DOWN as exc:
        print(f"projector: cannot reach Redis ({type(exc).__name__}: {exc}); is it running, and is REDIS_URL "
              "right?", file=sys.stderr)
    except MalformedDocument as exc:
        print(f"projector: {exc.detail}", file=sys.stderr)
        return 1
    except MONGO_ERRORS as exc:
        print(f"projector: cannot reach MongoDB ({type(exc).__name__}); is it running, and is MONGODB_URI "
              "right?", file=sys.stderr)
    return 2


def _command(args: argparse.Namespace, wiring: Wiring, settings: ProjectorSettings) -> int:
    if args.command == "status":
        rows = status.status(wiring.log, wiring.dead_letters, wiring.leases, wiring.model, settings.stall_seconds)
        print(status.render(rows, settings.group))
        return 1 if any(row.problems for row in rows) else 0
    if args.command == "show":
        return _show(args.account_id, wiring)
    if args.command == "verify":
        report = maintenance.verify(wiring.keys, wiring.model, wiring.history,
                                    maintenance.stream_accounts(wiring.client, wiring.keys), args.repair,
                                    not args.no_progress)
        for line in report.differences[:20]:
            print(line)
        if len(report.differences) > 20:
            print(f"... and {len(report.differences) - 20} more")
        print(f"verified {report.accounts} accounts: {len(report.differences)} differ; total balance "
              f"{report.stream_total} in the streams, {report.model_total} in the read model (minor units)"
              + (f"; repaired {len(report.repaired)}" if args.repair else ""))
        return 0 if report.ok or (args.repair and len(report.repaired) == len(report.differences)) else 1
    if args.command == "parked" and args.parked_command == "list":
        chosen = args.partition or range(wiring.keys.partitions)
        print(status.render_parked(wiring.dead_letters.parked(chosen)))
        return 0
    if args.command == "parked":
        replayed = maintenance.replay_parked(wiring.dead_letters, wiring.model, wiring.history, args.partition,
                                             set(args.id) if args.id else None)
        for entry_id in replayed.replayed:
            print(f"replayed {entry_id}")
        for entry_id, error in replayed.remaining:
            print(f"still parked {entry_id}: {error}")
        for account_id in replayed.released:
            print(f"released {account_id} from quarantine")
        return 0 if not replayed.remaining else 1
    if args.command == "rebuild":
        done = maintenance.rebuild(wiring.log, wiring.model, wiring.history, settings.timestamps_kept,
                                   not args.no_progress)
        print(f"rebuilt {done.accounts} accounts from {done.events} events in {done.seconds:.1f}s "
              f"({done.refused} refused, {done.caught_up} applied while catching up)")
        return 0
    return _run(wiring, settings)


def _show(account_id: str, wiring: Wiring) -> int:
    if not ACCOUNT_ID_PATTERN.fullmatch(account_id):
        print(f"{account_id[:80]!r} is not an account id (1-64 letters, digits, '.', '_' or '-', starting with a "
              "letter or digit)", file=sys.stderr)
        return 2
    document = wiring.model.find(account_id)
    if document is None:
        print(f"{account_id}: not in the read model (yet)", file=sys.stderr)
        return 1
    print(json.dumps(document, indent=2, default=str))
    return 0


def _run(wiring: Wiring, settings: ProjectorSettings) -> int:
    projector = wiring.runner()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        projector.stop()  # the current batch finishes (write, then ack) and the loop exits

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = None
    if settings.health_port:
        server = health.serve(projector.health, settings.health_bind, settings.health_port)
    try:
        projector.run()
    finally:
        if server is not None:
            server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
