"""The composition root: settings, one Redis client and the service, built once per process on first use.

This is state about *connections*, never about accounts: every request still rebuilds its account from
Redis. Lambda reuses it across invocations of a warm container; gunicorn workers each build their own.
Only entry points (each ``lambda_handler``, the gateway factory, the projector's ``__main__``) call this
module; everything below them receives what it needs as arguments.
"""

from __future__ import annotations

from functools import cache

import redis
from redis.exceptions import RedisClusterException

from shared import auth, logs, tracing
from shared import metrics as metrics_port
from shared.api import Dependencies
from shared.archive import open_archive
from shared.config import (
    AuthSettings,
    QuerySettings,
    Settings,
    load_auth_settings,
    load_consistency_secret,
    load_query_settings,
    load_settings,
)
from shared.consistency import ConsistencyTokens
from shared.errors import StoreUnavailable
from shared.event_store import EventStore
from shared.keys import KeySpace
from shared.metrics import Metrics
from shared.principal import Authenticator
from shared.queries import QueryService
from shared.redis_client import NodeMemory, build_client, memory, unavailable_as_store_error
from shared.redis_client import check_ready as redis_client_check_ready
from shared.redis_store import RedisEventStore
from shared.service import AccountService


@cache
def settings() -> Settings:
    loaded = load_settings()
    logs.configure(loaded.log_level)
    return loaded


@cache
def auth_settings() -> AuthSettings:
    """Who may call the API; refuses (ConfigError) when nothing says, rather than serving an open API."""
    return load_auth_settings()


@cache
def authenticator() -> Authenticator:
    return auth.authenticator(auth_settings())


@cache
def metrics() -> Metrics:
    config = settings()
    return metrics_port.build(config.metrics_format, config.metrics_namespace)


@cache
def keys() -> KeySpace:
    config = settings()
    return KeySpace(config.key_prefix, config.partitions)


@cache
def redis_client() -> redis.Redis:
    # A cluster client discovers the topology while it is built: an unreachable cluster is a 503 like any
    # other Redis outage, and the next request tries again (a failed build is not cached).
    try:
        with unavailable_as_store_error():
            return build_client(settings())
    except RedisClusterException as exc:  # the settings are validated, so this means "no seed answered"
        raise StoreUnavailable.unreachable() from exc


@cache
def service() -> AccountService:
    config = settings()
    store: EventStore = RedisEventStore(redis_client(), keys(), config.idempotency_ttl_seconds,
                                        config.redis_wait_replicas, config.redis_wait_timeout_seconds,
                                        config.partition_log_max_entries,
                                        open_archive(config.archive_url, config.key_prefix),
                                        config.archive_after_events)
    tracing_started()
    if tracing.SWITCH.on:
        from shared.traced_store import TracedEventStore

        store = TracedEventStore(store)
    return AccountService(store, max_attempts=config.command_max_attempts,
                          snapshot_interval=config.snapshot_interval,
                          deadline_seconds=config.command_deadline_seconds, metrics=metrics())


@cache
def tracing_started() -> bool:
    """Traces, when configured: started on first use, so in a gunicorn worker it happens after the fork."""
    config = settings()
    if config.tracing:
        tracing.configure(config.service_name or "ledgerstream-api")
    return config.tracing


@cache
def tokens() -> ConsistencyTokens:
    """Refuses (ConfigError) without CONSISTENCY_TOKEN_SECRET, rather than answer writes with no token."""
    config = settings()
    return ConsistencyTokens(load_consistency_secret(), config.key_prefix, config.partitions)


@cache
def query_settings() -> QuerySettings:
    return load_query_settings()


@cache
def queries() -> QueryService:
    """The read model's queries: one MongoDB client per process (a warm Lambda container keeps it)."""
    from shared.mongo_queries import MongoQueries, connect
    from shared.projection_progress import RedisProjectionProgress

    config, query = settings(), query_settings()
    model = MongoQueries(connect(query.mongo.uri, query.mongo.timeout_seconds), query.mongo.database,
                         query.mongo.collection, query.group)
    progress = RedisProjectionProgress(redis_client(), keys(), query.group, config.redis_timeout_seconds)
    return QueryService(model, progress, keys(), query.wait_seconds)


@cache
def dependencies() -> Dependencies:
    tracing_started()
    return Dependencies(settings(), service, authenticator(), metrics(), tokens(), queries)


def reset() -> None:
    """Forget the wiring (tests change the environment between cases)."""
    settings.cache_clear()
    auth_settings.cache_clear()
    authenticator.cache_clear()
    metrics.cache_clear()
    tracing_started.cache_clear()
    keys.cache_clear()
    redis_client.cache_clear()
    service.cache_clear()
    tokens.cache_clear()
    query_settings.cache_clear()
    queries.cache_clear()
    dependencies.cache_clear()


def redis_memory() -> list[NodeMemory]:
    """Redis's memory against its limit, per master (``StoreUnavailable`` when it cannot be read)."""
    return memory(redis_client())


def check_ready() -> None:
    """Readiness (see ``redis_client.check_ready``). Raises ``StoreUnavailable`` when requests cannot succeed."""
    redis_client_check_ready(redis_client(), keys())
