"""Archived account history (issue 21, part 2) on a real Redis (both topologies), with the archive in a folder
and in S3 (moto, in process): reads through the archive are exact and page across its boundary, the guarded
trim refuses whatever would lose an event, a crash between the steps loses nothing, and a damaged segment is
reported (503 for that account's history only, an ERROR line, ``verify --deep``), never skipped."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import boto3
import pytest
import redis
from moto import mock_aws

from devstack.mongo_standin import MongoStandIn
from devstack.redis_cluster import LocalCluster
from devstack.redis_server import free_port
from projector import maintenance, verification
from projector.archiving import Archiver, ArchiveWorker
from projector.partition_log import stream_accounts
from projector.read_model import document_state
from projector.wiring import Wiring, assemble
from shared import runtime
from shared.archive import Archive, open_archive, parse_name
from shared.errors import StoreUnavailable
from shared.event_store import Appended
from shared.keys import KeySpace
from shared.redis_store import RedisEventStore
from tests.support.apigw import body_of, call
from tests.support.environment import wired
from tests.support.events import history, new_event
from tests.support.memory_read_model import InMemoryReadModel
from tests.support.readmodel import ProjectorProcess, drain, group_drained, process_env, settings
from tests.support.targets import RedisTarget, ids_on_every_master
from tests.support.waiting import wait_until

EVERY = 5
LEASE = "archiver-test|1"


class Crash(Exception):
    """Stands for the process dying at that point: nothing after it runs."""


@pytest.fixture(params=["file", "s3"])
def archive_url(request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "file":
        yield f"file://{tmp_path}/archive"
        return
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="ledger-archive")
        yield "s3://ledger-archive/tests"


@dataclass
class Kit:
    client: redis.Redis
    keys: KeySpace
    store: RedisEventStore
    archive: Archive
    archiver: Archiver
    worker: ArchiveWorker

    def archive_all(self) -> None:
        """Archive passes until no account of any partition is due (every partition's lease is ours)."""
        def drained() -> bool:
            self.worker.run_pass()
            return not any(self.client.scard(self.keys.archive_due(p)) for p in range(self.keys.partitions))
        wait_until(drained, 30, "every due account archived")

    def stream_length(self, account_id: str) -> int:
        return int(self.client.xlen(self.keys.stream(account_id)))


@pytest.fixture
def kit(live_env: KeySpace, archive_url: str, monkeypatch: pytest.MonkeyPatch) -> Kit:
    monkeypatch.setenv("ARCHIVE_URL", archive_url)
    monkeypatch.setenv("ARCHIVE_AFTER_EVENTS", str(EVERY))
    runtime.reset()
    client = runtime.redis_client()
    archive = open_archive(archive_url, live_env.prefix)
    assert archive is not None
    store = RedisEventStore(client, live_env, 3600, archive=archive, archive_every=EVERY)
    for partition in range(live_env.partitions):
        client.set(live_env.lease(partition, "projector"), LEASE)
    archiver = Archiver(client, live_env, "projector", store, archive)
    owned = [(p, LEASE) for p in range(live_env.partitions)]
    return Kit(client, live_env, store, archive, archiver, ArchiveWorker(archiver, lambda: owned))


def _open(account_id: str, deposits: int) -> None:
    assert call("create_account", account_id)["statusCode"] == 201
    for n in range(deposits):
        assert call("deposit", account_id, {"amount": f"{n + 1}.05"})["statusCode"] == 200


def _opened_with(deposits: int) -> Decimal:
    return sum((Decimal(f"{n + 1}.05") for n in range(deposits)), Decimal(0))


def _pages(account_id: str, limit: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        page = body_of(call("list_events", account_id, query={"after": str(after), "limit": str(limit)}))
        events += page["events"]
        after = page["next_after"]
    return events


def test_history_pages_across_the_archive_boundary_exactly_as_before(kit: Kit) -> None:
    _open("arch-1", 22)
    before = body_of(call("list_events", "arch-1", query={"limit": "100"}))["events"]
    account = body_of(call("get_account", "arch-1"))
    assert kit.client.sismember(kit.keys.archive_due(kit.keys.partition_of("arch-1")), "arch-1")

    kit.archive_all()
    assert kit.stream_length("arch-1") == 0 and kit.store.archived_through("arch-1") == 23
    assert kit.worker.health.archived == 23  # ledger_projector_archived_events_total
    assert [s.file() for s in kit.archive.segments("arch-1")] == ["000000000001-000000000023.seg"]
    for limit in (1, 7, 23, 100):
        assert _pages("arch-1", limit) == before
    assert body_of(call("get_account", "arch-1")) == account

    assert call("deposit", "arch-1", {"amount": "1.00"})["statusCode"] == 200
    assert call("withdraw", "arch-1", {"amount": "9999"})["statusCode"] == 422
    page = body_of(call("list_events", "arch-1", query={"after": "20", "limit": "10"}))
    assert [e["version"] for e in page["events"]] == [21, 22, 23, 24]
    assert page["events"][:3] == before[20:]


def test_a_busy_account_keeps_being_archived_in_segments(kit: Kit) -> None:
    _open("arch-2", 8)
    kit.archive_all()
    _open_more = [call("deposit", "arch-2", {"amount": "1"}) for _ in range(7)]
    assert all(r["statusCode"] == 200 for r in _open_more)
    kit.archive_all()
    assert [(s.first, s.last) for s in kit.archive.segments("arch-2")] == [(1, 9), (10, 16)]
    assert [e["version"] for e in _pages("arch-2", 4)] == list(range(1, 17))
    assert Decimal(body_of(call("get_account", "arch-2"))["funds"]) == _opened_with(8) + 7


class TestTheGuardedTrim:
    def _ready(self, kit: Kit, account_id: str) -> int:
        _open(account_id, 6)
        return kit.keys.partition_of(account_id)

    def _untouched(self, kit: Kit, account_id: str) -> None:
        assert kit.stream_length(account_id) == 7 and kit.store.archived_through(account_id) == 0

    def test_without_the_lease_nothing_is_trimmed(self, kit: Kit) -> None:
        partition = self._ready(kit, "guard-1")
        done = kit.archiver.archive(partition, "someone-else|7", "guard-1")
        assert done.refused and done.events == 0
        self._untouched(kit, "guard-1")
        worker = ArchiveWorker(kit.archiver, lambda: [(partition, "someone-else|7")])
        assert worker.run_pass() == 0 and worker.health.archive_refused == 1

    def test_history_that_changed_since_the_upload_is_not_trimmed(self, kit: Kit,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
        """A failover that lost the last event and took another in its place: the segment holds the lost one."""
        partition = self._ready(kit, "guard-2")
        real_create = kit.archive.storage.create

        def upload_then_replace_the_last_event(name: str, blob: bytes) -> None:
            real_create(name, blob)
            stream = kit.keys.stream("guard-2")
            entries: Any = kit.client.xrange(stream)
            kit.client.delete(stream)
            for entry_id, fields in entries:
                replaced = {**fields, b"event_id": b"another-event"} if entry_id == b"7-0" else fields
                kit.client.xadd(stream, replaced, id=entry_id)

        monkeypatch.setattr(kit.archive.storage, "create", upload_then_replace_the_last_event)
        done = kit.archiver.archive(partition, LEASE, "guard-2")
        assert "not the event uploaded" in done.refused
        self._untouched(kit, "guard-2")

    def test_an_archive_that_moved_on_is_not_trimmed_into(self, kit: Kit) -> None:
        partition = self._ready(kit, "guard-3")
        kit.client.hset(kit.keys.snapshot("guard-3"), "archived", 3)
        done = kit.archiver.archive(partition, LEASE, "guard-3")
        assert "begins at 1" in done.refused and kit.stream_length("guard-3") == 7


def test_a_crash_between_upload_and_trim_loses_nothing(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    _open("crash-1", 6)
    partition = kit.keys.partition_of("crash-1")
    real_create = kit.archive.storage.create

    def upload_then_die(name: str, blob: bytes) -> None:
        real_create(name, blob)
        raise Crash

    monkeypatch.setattr(kit.archive.storage, "create", upload_then_die)
    with pytest.raises(Crash):
        kit.archiver.archive(partition, LEASE, "crash-1")
    monkeypatch.setattr(kit.archive.storage, "create", real_create)
    assert [(s.first, s.last) for s in kit.archive.segments("crash-1")] == [(1, 7)]  # uploaded, never committed
    assert [e.version for e in kit.store.read("crash-1")] == list(range(1, 8))

    assert call("deposit", "crash-1", {"amount": "2"})["statusCode"] == 200
    kit.archive_all()
    # The orphan stays (deleting it could race with another replica using it); the chain says it is not history.
    assert [(s.first, s.last) for s in kit.archive.segments("crash-1")] == [(1, 7), (1, 8)]
    assert kit.store.archive_head("crash-1") == (1, 8)
    assert [e.version for e in kit.store.read("crash-1")] == list(range(1, 9))
    assert [e["version"] for e in _pages("crash-1", 3)] == list(range(1, 9))
    assert Decimal(body_of(call("get_account", "crash-1"))["funds"]) == _opened_with(6) + 2


def test_a_crash_between_trim_and_bookkeeping_loses_nothing(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    _open("crash-2", 6)
    partition = kit.keys.partition_of("crash-2")
    expected = kit.store.read("crash-2")

    def die(partition: int, account_id: str) -> None:
        raise Crash

    monkeypatch.setattr(kit.archiver, "_done", die)
    with pytest.raises(Crash):
        kit.archiver.archive(partition, LEASE, "crash-2")
    monkeypatch.undo()
    assert kit.stream_length("crash-2") == 0 and kit.client.sismember(kit.keys.archive_due(partition), "crash-2")
    assert kit.store.read("crash-2") == expected
    kit.archive_all()  # runs again: nothing left to move, so it only takes the account off the due set
    assert kit.store.read("crash-2") == expected and len(kit.archive.segments("crash-2")) == 1


def _damage(kit: Kit, account_id: str, how: str) -> None:
    (segment,) = kit.archive.segments(account_id)
    path = kit.archive.path(account_id, segment)
    if how == "missing":
        kit.archive.storage.delete(path)
        return
    blob = kit.archive.storage.get(path)
    kit.archive.storage.put(path, blob[:-3] + bytes([blob[-3] ^ 1]) + blob[-2:])


@pytest.mark.parametrize("how", ["corrupt", "missing"])
def test_a_damaged_segment_is_reported_for_that_account_only(kit: Kit, how: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    _open("dmg-1", 6)
    _open("dmg-2", 6)
    kit.archive_all()
    _damage(kit, "dmg-1", how)

    answer = call("list_events", "dmg-1")
    assert answer["statusCode"] == 503 and answer["headers"].get("Retry-After")
    problem = body_of(answer)
    assert problem["code"] == "archive-damaged"
    assert ".seg" not in answer["body"] and "sha" not in answer["body"]  # nothing internal reaches a client
    assert any(r.levelname == "ERROR" and "dmg-1" in r.getMessage() for r in caplog.records)
    assert call("get_account", "dmg-1")["statusCode"] == 200  # served from the snapshot
    assert call("deposit", "dmg-1", {"amount": "1"})["statusCode"] == 200
    assert call("list_events", "dmg-1", query={"after": "7"})["statusCode"] == 200  # past the damage
    assert [e["version"] for e in _pages("dmg-2", 3)] == list(range(1, 8))

    wiring = _wiring(kit)
    report = verification.verify(kit.keys, wiring.model, wiring.history, stream_accounts(kit.client, kit.keys),
                                 progress=False, deep=wiring.stored)
    damaged = [d for d in report.differences if "archived history cannot be read" in d]
    assert len(damaged) == 1 and damaged[0].startswith("dmg-1:")


def _pooled(client: redis.Redis) -> redis.Redis:
    """A client on a pool (the service's keeps one connection: not for several threads); a cluster's pools."""
    return client if hasattr(client, "nodes_manager") else redis.Redis(connection_pool=client.connection_pool)


def _wiring(kit: Kit) -> Wiring:
    return assemble(_pooled(kit.client), kit.keys, settings("mongodb://unused:1", "unused"), model=InMemoryReadModel(),
                    block_ms=100, archive=kit.archive, archive_every=EVERY)


def test_projection_rebuild_and_verify_after_archiving_agree_with_the_api(kit: Kit) -> None:
    accounts = [f"rv-{n}" for n in range(6)]
    for n, account_id in enumerate(accounts):
        _open(account_id, 4 + 3 * n)
    kit.archive_all()
    assert sum(kit.stream_length(a) for a in accounts) < sum(5 + 3 * n for n in range(6))
    kit.client.delete(*(kit.keys.lease(p, "projector") for p in range(kit.keys.partitions)))
    wiring = _wiring(kit)
    drain(wiring.runner())  # the log has every event; gap-fill and resync would read through the archive
    model: Any = wiring.model

    def agrees() -> None:
        report = verification.verify(kit.keys, model, wiring.history, stream_accounts(kit.client, kit.keys),
                                     progress=False, deep=wiring.stored)
        assert report.ok and report.accounts == len(accounts), report.differences
        for account_id in accounts:
            shown = body_of(call("get_account", account_id))
            stored = document_state(model.find(account_id))
            assert (stored.version, stored.balance) == (shown["version"], int(Decimal(shown["funds"]) * 100))

    agrees()
    done = maintenance.rebuild(wiring.log, model, wiring.history, stream_accounts(kit.client, kit.keys), 20, False)
    assert done.accounts == len(accounts) and done.events == sum(5 + 3 * n for n in range(6))
    agrees()

    kit.client.hset(kit.keys.snapshot("rv-5"), "state", kit.client.hget(kit.keys.snapshot("rv-1"), "state") or b"")
    report = verification.verify(kit.keys, model, wiring.history, stream_accounts(kit.client, kit.keys),
                                 progress=False, deep=wiring.stored)
    assert [d.split(":")[0] for d in report.differences] == ["rv-5"] and "snapshot" in report.differences[0]


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """moto's standalone S3 server, for a projector child process to reach over HTTP."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3").create_bucket(Bucket="ledger-archive")
    try:
        yield env
    finally:
        server.stop()


def _pause_writes(client: redis.Redis, milliseconds: int) -> None:
    """CLIENT PAUSE WRITE on every master (0: unpause). Scripts are writes to it, reads are not: an archiver
    that has uploaded a segment waits on its trim script while the pause lasts."""
    cluster: Any = client
    nodes = [cluster.get_redis_connection(n) for n in cluster.get_primaries()] if hasattr(client, "nodes_manager") \
        else [client]
    for node in nodes:
        if milliseconds:
            node.execute_command("CLIENT", "PAUSE", milliseconds, "WRITE")
        else:
            node.execute_command("CLIENT", "UNPAUSE")


class UploadTrap:
    """In moto's server (this process): when armed, the next segment upload lands, and then Redis's writes are
    paused before S3 answers, so the archiver that sent it is held between its upload and its trim."""

    def __init__(self, client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
        from moto.s3.models import S3Backend

        self.armed, self.sprung = threading.Event(), threading.Event()
        self.key = ""
        original = S3Backend.put_object

        def put_object(backend: Any, bucket_name: str, key_name: str, *args: Any, **kwargs: Any) -> Any:
            stored = original(backend, bucket_name, key_name, *args, **kwargs)
            if key_name.endswith(".seg") and self.armed.is_set():
                self.armed.clear()
                _pause_writes(client, 10_000)
                self.key = key_name
                self.sprung.set()
            return stored

        monkeypatch.setattr(S3Backend, "put_object", put_object)

    def arm(self) -> None:
        self.sprung.clear()
        self.armed.set()


class Writer:
    """Appends deposits to its accounts, at random, until stopped, remembering every event id it wrote."""

    def __init__(self, store: RedisEventStore, accounts: list[str]) -> None:
        self.store = store
        self.written: dict[str, list[str]] = {a: [] for a in accounts}
        for account_id in accounts:
            events = history(account_id, 4)
            assert store.append(account_id, 0, events) == Appended(4)
            self.written[account_id] += [e.event_id for e in events]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, daemon=True)

    def _write(self) -> None:
        rng = random.Random(7)
        while not self._stop.is_set():
            account_id = rng.choice(list(self.written))
            event = new_event(account_id, amount=rng.randint(1, 500))
            outcome = self.store.append(account_id, len(self.written[account_id]), [event])
            assert isinstance(outcome, Appended), outcome
            self.written[account_id].append(event.event_id)
            self._stop.wait(0.002)  # a pace of a few hundred writes/s, not a wait for anything

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkilled_archiver_processes_lose_no_event(live_env: KeySpace, redis_target: RedisTarget, mongo_db: str,
                                                     mongo_standin: MongoStandIn, s3_server: dict[str, str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A real ``python -m projector`` archiving to S3 (moto's server) is SIGKILLed again and again while a writer
    keeps appending: five times held between an upload and its trim (``UploadTrap``), five times just after a
    trim; then one runs to the end. Every account's
    history reads back complete and exact, and ``verify --deep`` finds nothing."""
    keys, url = live_env, "s3://ledger-archive/kill"
    archive = open_archive(url, keys.prefix)
    assert archive is not None
    client = _pooled(runtime.redis_client())  # shared by the writer, the trap and the checks
    store = RedisEventStore(client, keys, 3600, archive=archive, archive_every=3)
    accounts = [f"kill-{n}" for n in range(24)]
    env = process_env(keys, redis_target, mongo_standin.uri, mongo_db, **s3_server, ARCHIVE_URL=url,
                      ARCHIVE_AFTER_EVENTS="3", PROJECTOR_ARCHIVE_PER_PASS="2", PROJECTOR_LEASE_TTL_SECONDS="2",
                      LOG_LEVEL="WARNING")

    def archived() -> int:
        return sum(store.archived_through(a) for a in accounts)

    trap = UploadTrap(client, monkeypatch)
    kills = {"after an upload, before its trim": 0, "just after a trim": 0}
    with Writer(store, accounts) as writer:
        for round_ in range(10):
            before = archived()
            process = ProjectorProcess(env)
            try:
                if round_ % 2:
                    wait_until(lambda: archived() > before, 60, "the projector archiving something")  # noqa: B023
                    kills["just after a trim"] += 1
                else:
                    trap.arm()
                    wait_until(trap.sprung.is_set, 60, "a segment upload")
                    *_, trapped, file = trap.key.split("/")
                    segment = parse_name(file)
                    assert segment is not None and segment.last > store.archived_through(trapped), trap.key
                    kills["after an upload, before its trim"] += 1
            finally:
                process.kill()
                trap.armed.clear()
                _pause_writes(client, 0)

    def settled() -> bool:
        return (not any(client.scard(keys.archive_due(p)) for p in range(keys.partitions))
                and group_drained(client, keys, "projector"))

    process = ProjectorProcess(env)
    try:
        wait_until(settled, 120, "every due account archived and every event projected")
    finally:
        assert process.terminate() == 0
    print(f"\nSIGKILLs: {kills}; events archived: {archived()} of {sum(len(i) for i in writer.written.values())}")
    for account_id, ids in writer.written.items():
        events = store.read(account_id)
        assert [e.event_id for e in events] == ids and [e.version for e in events] == list(range(1, len(ids) + 1))
    wiring = assemble(client, keys, settings(mongo_standin.uri, mongo_db), archive=archive, archive_every=3)
    report = verification.verify(keys, wiring.model, wiring.history, stream_accounts(client, keys), progress=False,
                                 deep=wiring.stored)
    assert report.ok and report.accounts == len(accounts), report.differences


def test_the_projector_backs_off_on_history_it_cannot_read_then_catches_up(kit: Kit) -> None:
    """A read model that needs archived history (here: logs trimmed before it ever ran) while a segment is
    damaged: the loop backs off as for an outage, writes and parks nothing, and catches up once the segment
    is restored."""
    _open("gap-1", 6)
    kit.archive_all()
    (segment,) = kit.archive.segments("gap-1")
    path = kit.archive.path("gap-1", segment)
    good = kit.archive.storage.get(path)
    _damage(kit, "gap-1", "corrupt")
    for partition in range(kit.keys.partitions):
        kit.client.xtrim(kit.keys.partition_log(partition), maxlen=0)
    kit.client.delete(*(kit.keys.lease(p, "projector") for p in range(kit.keys.partitions)))
    assert call("deposit", "gap-1", {"amount": "1"})["statusCode"] == 200
    wiring = _wiring(kit)
    runner = wiring.runner()
    model: Any = wiring.model
    for _ in range(20):
        with contextlib.suppress(StoreUnavailable):
            runner.step()
    assert model.find("gap-1") is None
    assert not wiring.dead_letters.parked(range(kit.keys.partitions))

    kit.archive.storage.put(path, good)
    drain(runner)
    assert document_state(model.find("gap-1")).version == 8
    report = verification.verify(kit.keys, model, wiring.history, stream_accounts(kit.client, kit.keys),
                                 progress=False, deep=wiring.stored)
    assert report.ok, report.differences


@pytest.mark.slow
def test_reads_need_only_their_own_node_with_a_master_down() -> None:
    """The read script missing from a node's cache is loaded on that node alone: redis-py's cluster client
    would load it on every master and fail with one of them down (the projector's gap-fill read this way
    stalled every partition when one master was out of reach)."""
    cluster = LocalCluster(masters=3, node_timeout_ms=1000).start()
    keys = KeySpace(f"t{uuid.uuid4().hex[:8]}", 8)
    try:
        with wired(cluster.url, keys.prefix, 8, REDIS_CLUSTER="true", REDIS_CLUSTER_NODES=cluster.nodes_setting,
                   REDIS_TIMEOUT_SECONDS="0.5"):
            client: Any = runtime.redis_client()
            store = RedisEventStore(client, keys, 3600)
            down, *up = ids_on_every_master(client, keys)
            for account_id in (down, *up):
                assert store.append(account_id, 0, history(account_id, 3)) == Appended(3)
            for node in client.get_primaries():
                client.get_redis_connection(node).script_flush()
            cluster.kill(cluster.node_at(client.get_node_from_key(keys.stream(down)).name))
            for account_id in up:
                assert [e.version for e in store.read(account_id)] == [1, 2, 3]
            with pytest.raises(StoreUnavailable):
                store.read(down)
    finally:
        cluster.stop()
