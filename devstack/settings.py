"""What ``python -m devstack`` (``make run``) needs: where it serves, where its own servers listen, where its
state lives. The only reader of the DEV_* variables: the service, the projector and the tools never see them
(``make run`` hands them explicit REDIS_URL, MONGODB_URI and AUTH_* settings instead)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.config import Environment


@dataclass(frozen=True)
class DevSettings:
    port: int = 8080
    redis_port: int = 6379
    mongo_port: int = 27017
    projector_health_port: int = 8081
    state_dir: Path = Path(".devstack")
    cluster_port: int = 7000
    #: The local identity provider (discovery document and key set) that the API trusts under make run.
    issuer_port: int = 8083
    #: The gateway's health process (/healthz, /readyz, /metrics) on loopback; 0: none.
    health_port: int = 8082


def load_dev_settings(environ: Mapping[str, str] | None = None) -> DevSettings:
    env = Environment(environ)
    defaults = DevSettings()
    return DevSettings(
        port=env.number("PORT", defaults.port, int, 1, 65_535),
        redis_port=env.number("DEV_REDIS_PORT", defaults.redis_port, int, 1, 65_535),
        mongo_port=env.number("DEV_MONGO_PORT", defaults.mongo_port, int, 1, 65_535),
        projector_health_port=env.number("PROJECTOR_HEALTH_PORT", defaults.projector_health_port, int, 0, 65_535),
        state_dir=Path(env.raw("DEV_STATE_DIR") or defaults.state_dir).resolve(),
        cluster_port=env.number("DEV_CLUSTER_PORT", defaults.cluster_port, int, 1, 55_533),
        issuer_port=env.number("DEV_ISSUER_PORT", defaults.issuer_port, int, 1, 65_535),
        health_port=env.number("DEV_HEALTH_PORT", defaults.health_port, int, 0, 65_535),
    )
