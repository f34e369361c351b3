"""The projector's settings, beyond the Redis ones it shares with the functions (``shared.config.Settings``)."""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.config import Environment, MongoSettings, load_mongo_settings

#: The read model's defaults, the same for the projector and the query functions.
_MONGO = MongoSettings()


@dataclass(frozen=True)
class ProjectorSettings:
    mongodb_uri: str = field(default=_MONGO.uri, repr=False)  # may embed a password
    mongodb_database: str = _MONGO.database
    mongodb_collection: str = _MONGO.collection
    mongodb_timeout_seconds: float = _MONGO.timeout_seconds
    group: str = "projector"
    #: A readable name for this replica; each process adds a random suffix, so two can never share an identity.
    name: str = ""
    batch_size: int = 500
    lease_ttl_seconds: float = 10.0
    max_deliveries: int = 5
    timestamps_kept: int = 20
    check_interval_seconds: float = 60.0
    stall_seconds: float = 60.0
    health_port: int = 8081
    health_bind: str = "0.0.0.0"  # probes come from outside the container
    #: Accounts archived per owned partition and pass (ARCHIVE_URL set): bounds what one pass costs Redis.
    archive_per_pass: int = 20


def load_projector_settings(environ: Mapping[str, str] | None = None) -> ProjectorSettings:
    env = Environment(environ)
    defaults = ProjectorSettings()
    mongo = load_mongo_settings(env)
    return ProjectorSettings(
        mongodb_uri=mongo.uri,
        mongodb_database=mongo.database,
        mongodb_collection=mongo.collection,
        mongodb_timeout_seconds=mongo.timeout_seconds,
        group=env.name("PROJECTOR_GROUP", defaults.group),
        name=env.name("PROJECTOR_NAME", "") or _default_name(),
        batch_size=env.number("PROJECTOR_BATCH_SIZE", defaults.batch_size, int, 1, 10_000),
        lease_ttl_seconds=env.number("PROJECTOR_LEASE_TTL_SECONDS", defaults.lease_ttl_seconds, float, 0.5, 600.0),
        max_deliveries=env.number("PROJECTOR_MAX_DELIVERIES", defaults.max_deliveries, int, 1, 1_000),
        timestamps_kept=env.number("PROJECTOR_TIMESTAMPS_KEPT", defaults.timestamps_kept, int, 1, 1_000),
        check_interval_seconds=env.number("PROJECTOR_CHECK_INTERVAL_SECONDS", defaults.check_interval_seconds,
                                          float, 0.1, 86_400.0),
        stall_seconds=env.number("PROJECTOR_STALL_SECONDS", defaults.stall_seconds, float, 1.0, 86_400.0),
        health_port=env.number("PROJECTOR_HEALTH_PORT", defaults.health_port, int, 0, 65_535),
        health_bind=env.host("PROJECTOR_HEALTH_BIND", defaults.health_bind),
        archive_per_pass=env.number("PROJECTOR_ARCHIVE_PER_PASS", defaults.archive_per_pass, int, 1, 10_000),
    )


def _default_name() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:48] or "projector"
