"""Settings from the environment. This is the only module that reads ``os.environ``.

Every value is validated when it is read, and a bad one raises ``ConfigError`` naming the variable,
so a misconfigured process fails at start-up with a message instead of misbehaving later.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """What the write side (handlers, gateway) needs."""

    redis_url: str = field(default="redis://localhost:6379/0", repr=False)  # may embed a password
    redis_password: str | None = field(default=None, repr=False)
    redis_cluster: bool = False
    #: Further cluster seed nodes beside REDIS_URL's host, so the client can start while one node is down.
    redis_cluster_nodes: tuple[tuple[str, int], ...] = ()
    redis_timeout_seconds: float = 2.0
    #: One kept connection per process instead of a pool checkout per command: right when a process serves
    #: one request at a time (Lambda, gunicorn sync workers); turn it off for threaded workers.
    redis_single_connection: bool = True
    key_prefix: str = "ledger"
    partitions: int = 16
    idempotency_ttl_seconds: int = 86_400
    #: Refuse a POST without an Idempotency-Key (428): the only way a client can retry an unknown outcome safely.
    require_idempotency_key: bool = False
    #: Replicas that must confirm a write (WAIT) before it is acknowledged; 0: the primary's word is enough.
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 1_000
    #: A command's whole time budget, resolving a lost reply included; past it, 503 outcome-unknown.
    command_deadline_seconds: float = 8.0
    command_max_attempts: int = 10
    snapshot_interval: int = 2
    max_body_bytes: int = 16_384
    log_level: str = "INFO"


@dataclass(frozen=True)
class ProjectorSettings:
    """What the projector needs beyond the write side's settings."""

    mongodb_uri: str = field(default="mongodb://localhost:27017", repr=False)
    mongodb_database: str = "accountDB"
    mongodb_collection: str = "accountCollection"
    mongodb_timeout_ms: int = 5_000
    group: str = "projector"
    #: A readable name for this replica; each process adds a random suffix, so two can never share an identity.
    name: str = ""
    batch_size: int = 500
    #: Longest wait between reads when every owned partition is idle (reads are per partition: no blocking
    #: read can span partitions on a cluster).
    poll_ms: int = 50
    lease_ttl_ms: int = 10_000
    max_deliveries: int = 5
    timestamps_kept: int = 20
    check_interval_s: int = 60
    stall_s: int = 60
    health_port: int = 8081
    health_bind: str = "0.0.0.0"  # probes come from outside the container


@dataclass(frozen=True)
class GatewaySettings:
    """The container gateway: gunicorn's settings, and the side process that answers its health probes."""

    bind: str = "0.0.0.0:8080"  # all interfaces: inside a container, behind the proxy
    #: The cores this process may run on, plus one (see the README's benchmarks for why).
    workers: int = field(default_factory=lambda: usable_cores() + 1)
    worker_class: str = "sync"
    threads: int = 1
    timeout: int = 30
    graceful_timeout: int = 10
    keepalive: int = 5
    #: Where the health process listens (host:port); empty: no health process (``make run``, tests).
    health_bind: str = ""
    #: Take the request id from the X-Request-Id header, because a proxy we trust (nginx) sets it.
    trust_request_id: bool = False


#: Signature algorithms a token may use: asymmetric only, so no verifier ever holds a secret that could sign.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_UNCONFIGURED = ("authentication is not configured: set AUTH_ISSUER and AUTH_AUDIENCE (optionally AUTH_JWKS_URL, "
                 "AUTH_ALGORITHMS) to accept that issuer's bearer tokens, or AUTH_MODE=none to serve every caller "
                 "as an administrator (development and tests only)")


@dataclass(frozen=True)
class AuthSettings:
    """Who may call the API: bearer JWTs of one OIDC issuer (``jwt``), or nobody is asked (``none``)."""

    mode: str = "jwt"
    issuer: str = ""
    audience: str = ""
    #: Where the issuer publishes its keys; empty: from its /.well-known/openid-configuration.
    jwks_url: str = ""
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    #: Clock skew tolerated on exp, nbf and iat.
    leeway_seconds: int = 30
    #: Least time between two fetches of the key set forced by tokens with an unknown key id, so a flood of
    #: made-up key ids cannot turn into a flood of requests to the identity provider.
    jwks_cooldown_seconds: float = 30.0
    #: What the identity provider puts before the API's scope names (a Cognito resource server's identifier
    #: and a slash, say): tokens then carry <prefix>accounts:read, and so on.
    scope_prefix: str = ""


def load_auth_settings(environ: Mapping[str, str] | None = None) -> AuthSettings:
    """Secure by default: with no AUTH_* variable at all this refuses, instead of serving an open API."""
    env = os.environ if environ is None else environ
    defaults = AuthSettings()
    mode = (_raw(env, "AUTH_MODE") or "").lower()
    issuer = _raw(env, "AUTH_ISSUER")
    if mode == "none":
        if issuer is not None:
            raise ConfigError("AUTH_MODE=none turns authentication off, but AUTH_ISSUER is set: unset one of them")
        return AuthSettings(mode="none")
    if mode not in ("", "jwt"):
        raise ConfigError(f"AUTH_MODE must be jwt or none, got {mode[:40]!r}")
    if issuer is None:
        raise ConfigError(_UNCONFIGURED)
    audience = _raw(env, "AUTH_AUDIENCE")
    if audience is None:
        raise ConfigError("AUTH_AUDIENCE must be set with AUTH_ISSUER: the audience (or, for Cognito access tokens, "
                          "the app client id) that tokens for this API carry")
    if not re.fullmatch(r"[\x21-\x7e]{1,256}", audience):
        raise ConfigError("AUTH_AUDIENCE must be 1-256 visible ASCII characters")
    jwks_url = _raw(env, "AUTH_JWKS_URL")
    return AuthSettings(
        mode="jwt",
        issuer=issuer_url(issuer, "AUTH_ISSUER"),
        audience=audience,
        jwks_url=issuer_url(jwks_url, "AUTH_JWKS_URL") if jwks_url else "",
        algorithms=_algorithms(env, defaults.algorithms),
        leeway_seconds=_number(env, "AUTH_LEEWAY_SECONDS", defaults.leeway_seconds, int, 0, 300),
        jwks_cooldown_seconds=_number(env, "AUTH_JWKS_COOLDOWN_SECONDS", defaults.jwks_cooldown_seconds, float,
                                      0.0, 3_600.0),
        scope_prefix=_matching(env, "AUTH_SCOPE_PREFIX", "", _SCOPE_PREFIX, "1-200 visible ASCII characters"),
    )


_SCOPE_PREFIX = re.compile(r"[\x21-\x7e]{1,200}")


_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def issuer_url(raw: str, name: str) -> str:
    """An https URL; plain http only on loopback (a local issuer), where nothing travels over a network."""
    try:
        parts = urlsplit(raw)
        host = parts.hostname
    except ValueError:
        raise ConfigError(f"{name} is not a valid URL") from None
    if parts.scheme == "https" and host:
        return raw
    if parts.scheme == "http" and host in _LOOPBACK:
        return raw
    raise ConfigError(f"{name} must be an https:// URL (http:// only on localhost), got {raw[:120]!r}")


def _algorithms(env: Mapping[str, str], default: tuple[str, ...]) -> tuple[str, ...]:
    raw = _raw(env, "AUTH_ALGORITHMS")
    if raw is None:
        return default
    chosen = tuple(item.strip() for item in raw.split(",") if item.strip())
    wrong = [item for item in chosen if item not in ASYMMETRIC_ALGORITHMS]
    if wrong or not chosen:
        raise ConfigError(f"AUTH_ALGORITHMS must be a comma-separated list of {', '.join(ASYMMETRIC_ALGORITHMS)} "
                          f"(asymmetric algorithms only), got {raw[:80]!r}")
    return chosen


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity (which a container's cpuset narrows), not the host's count.
    A CPU quota (``docker run --cpus``) is not visible here; set WEB_CONCURRENCY there."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_gateway_settings(environ: Mapping[str, str] | None = None) -> GatewaySettings:
    env = os.environ if environ is None else environ
    defaults = GatewaySettings()
    return GatewaySettings(
        bind=_address(env, "GUNICORN_BIND", defaults.bind),
        workers=_number(env, "WEB_CONCURRENCY", defaults.workers, int, 1, 64),
        worker_class=_choice(env, "GUNICORN_WORKER_CLASS", defaults.worker_class, ("SYNC", "GTHREAD")).lower(),
        threads=_number(env, "GUNICORN_THREADS", defaults.threads, int, 1, 64),
        timeout=_number(env, "GUNICORN_TIMEOUT", defaults.timeout, int, 5, 3_600),
        graceful_timeout=_number(env, "GUNICORN_GRACEFUL_TIMEOUT", defaults.graceful_timeout, int, 1, 600),
        keepalive=_number(env, "GUNICORN_KEEPALIVE", defaults.keepalive, int, 0, 600),
        health_bind=_address(env, "GATEWAY_HEALTH_BIND", defaults.health_bind) if _raw(env, "GATEWAY_HEALTH_BIND")
        else "",
        trust_request_id=_flag(env, "TRUST_PROXY_REQUEST_ID", defaults.trust_request_id),
    )


_ADDRESS = re.compile(r"(?P<host>[A-Za-z0-9.:-]{1,253}|\[[0-9A-Fa-f:]+\]):(?P<port>[0-9]{1,5})")


def _address(env: Mapping[str, str], name: str, default: str) -> str:
    expected = "host:port, like 0.0.0.0:8080"
    raw = _matching(env, name, default, _ADDRESS, expected)
    match = _ADDRESS.fullmatch(raw)
    if match is not None and not 1 <= int(match["port"]) <= 65_535:
        raise ConfigError(f"{name} must be {expected}, got {raw[:80]!r}")
    return raw


def _matching(env: Mapping[str, str], name: str, default: str, pattern: re.Pattern[str], expected: str) -> str:
    """The variable's text when ``pattern`` matches all of it, ``default`` when it is unset; else a ConfigError."""
    raw = _raw(env, name)
    if raw is None:
        return default
    if not pattern.fullmatch(raw):
        raise ConfigError(f"{name} must be {expected}, got {raw[:80]!r}")
    return raw


@dataclass(frozen=True)
class DevSettings:
    """What ``python -m devstack`` (``make run``) needs: where to serve and where its own servers listen."""

    port: int = 8080
    workers: int = 2
    redis_port: int = 6379
    mongo_port: int = 27017
    projector_health_port: int = 8081
    state_dir: Path = Path(".devstack")
    cluster_port: int = 7000
    #: The local identity provider (discovery document and key set) that the API trusts under make run.
    issuer_port: int = 8083


def load_dev_settings(environ: Mapping[str, str] | None = None) -> DevSettings:
    env = os.environ if environ is None else environ
    defaults = DevSettings()
    return DevSettings(
        port=_number(env, "PORT", defaults.port, int, 1, 65_535),
        workers=_number(env, "WEB_CONCURRENCY", defaults.workers, int, 1, 64),
        redis_port=_number(env, "DEV_REDIS_PORT", defaults.redis_port, int, 1, 65_535),
        mongo_port=_number(env, "DEV_MONGO_PORT", defaults.mongo_port, int, 1, 65_535),
        projector_health_port=_number(env, "PROJECTOR_HEALTH_PORT", defaults.projector_health_port, int, 0, 65_535),
        state_dir=Path(_raw(env, "DEV_STATE_DIR") or defaults.state_dir).resolve(),
        cluster_port=_number(env, "DEV_CLUSTER_PORT", defaults.cluster_port, int, 1, 55_533),
        issuer_port=_number(env, "DEV_ISSUER_PORT", defaults.issuer_port, int, 1, 65_535),
    )


def load_projector_settings(environ: Mapping[str, str] | None = None) -> ProjectorSettings:
    env = os.environ if environ is None else environ
    defaults = ProjectorSettings()
    mongo_port = _number(env, "DEV_MONGO_PORT", 27017, int, 1, 65_535)
    return ProjectorSettings(
        mongodb_uri=_url(env, "MONGODB_URI", f"mongodb://localhost:{mongo_port}", ("mongodb", "mongodb+srv"),
                         ("uri", "url", "MONGODB_URI")),
        mongodb_database=_name(env, "MONGODB_DATABASE", defaults.mongodb_database),
        mongodb_collection=_name(env, "MONGODB_COLLECTION", defaults.mongodb_collection),
        mongodb_timeout_ms=_number(env, "MONGODB_TIMEOUT_MS", defaults.mongodb_timeout_ms, int, 100, 120_000),
        group=_name(env, "PROJECTOR_GROUP", defaults.group),
        name=_name(env, "PROJECTOR_NAME", "") or _default_name(),
        batch_size=_number(env, "PROJECTOR_BATCH_SIZE", defaults.batch_size, int, 1, 10_000),
        poll_ms=_number(env, "PROJECTOR_POLL_MS", defaults.poll_ms, int, 1, 5_000),
        lease_ttl_ms=_number(env, "PROJECTOR_LEASE_TTL_MS", defaults.lease_ttl_ms, int, 500, 600_000),
        max_deliveries=_number(env, "PROJECTOR_MAX_DELIVERIES", defaults.max_deliveries, int, 1, 1_000),
        timestamps_kept=_number(env, "PROJECTOR_TIMESTAMPS_KEPT", defaults.timestamps_kept, int, 1, 1_000),
        check_interval_s=_number(env, "PROJECTOR_CHECK_INTERVAL_S", defaults.check_interval_s, int, 1, 86_400),
        stall_s=_number(env, "PROJECTOR_STALL_SECONDS", defaults.stall_s, int, 1, 86_400),
        health_port=_number(env, "PROJECTOR_HEALTH_PORT", defaults.health_port, int, 0, 65_535),
        health_bind=_host(env, "PROJECTOR_HEALTH_BIND", defaults.health_bind),
    )


def _default_name() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:48] or "projector"


_HOST = re.compile(r"[A-Za-z0-9.:-]{1,253}")


def _host(env: Mapping[str, str], name: str, default: str) -> str:
    return _matching(env, name, default, _HOST, "an address to bind, like 127.0.0.1 or 0.0.0.0")


def _name(env: Mapping[str, str], name: str, default: str) -> str:
    return _matching(env, name, default, _NAME_PATTERN, f"match {_NAME_PATTERN.pattern}")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    defaults = Settings()
    # Without REDIS_URL every tool looks where `make run` starts its Redis (DEV_REDIS_PORT moves both).
    redis_port = _number(env, "DEV_REDIS_PORT", 6379, int, 1, 65_535)
    cluster = _flag(env, "REDIS_CLUSTER", defaults.redis_cluster)
    return Settings(
        redis_url=_redis_url(env, f"redis://localhost:{redis_port}/0", cluster),
        redis_password=_secret(env, "REDIS_PASSWORD", ("password", "REDIS_PASSWORD")),
        redis_cluster=cluster,
        redis_cluster_nodes=_cluster_nodes(env, cluster),
        redis_timeout_seconds=_number(env, "REDIS_TIMEOUT_SECONDS", defaults.redis_timeout_seconds, float,
                                      0.05, 60.0),
        redis_single_connection=_flag(env, "REDIS_SINGLE_CONNECTION", defaults.redis_single_connection),
        key_prefix=_key_prefix(env, defaults.key_prefix),
        partitions=_number(env, "LEDGER_PARTITIONS", defaults.partitions, int, 1, 16_384),
        idempotency_ttl_seconds=_number(env, "IDEMPOTENCY_TTL_SECONDS", defaults.idempotency_ttl_seconds,
                                        int, 60, 30 * 86_400),
        require_idempotency_key=_flag(env, "REQUIRE_IDEMPOTENCY_KEY", defaults.require_idempotency_key),
        redis_wait_replicas=_number(env, "REDIS_WAIT_REPLICAS", defaults.redis_wait_replicas, int, 0, 16),
        redis_wait_timeout_ms=_number(env, "REDIS_WAIT_TIMEOUT_MS", defaults.redis_wait_timeout_ms, int, 10,
                                      60_000),
        command_deadline_seconds=_number(env, "COMMAND_DEADLINE_SECONDS", defaults.command_deadline_seconds,
                                         float, 0.5, 300.0),
        command_max_attempts=_number(env, "COMMAND_MAX_ATTEMPTS", defaults.command_max_attempts, int, 1, 100),
        snapshot_interval=_number(env, "SNAPSHOT_INTERVAL", defaults.snapshot_interval, int, 0, 100_000),
        max_body_bytes=_number(env, "MAX_BODY_BYTES", defaults.max_body_bytes, int, 256, 1_048_576),
        log_level=_choice(env, "LOG_LEVEL", defaults.log_level, ("DEBUG", "INFO", "WARNING", "ERROR")),
    )


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _number(env: Mapping[str, str], name: str, default: T, kind: Callable[[str], T],
            low: float, high: float) -> T:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        noun = "whole number" if kind is int else "number"
        raise ConfigError(f"{name} must be a {noun} between {low} and {high}, got {raw!r}") from None
    if not low <= value <= high:  # type: ignore[operator]
        raise ConfigError(f"{name} must be between {low} and {high}, got {raw!r}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = _raw(env, name)
    if raw is None:
        return default
    if raw.upper() not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw.upper()


def _secret(env: Mapping[str, str], name: str, json_keys: tuple[str, ...]) -> str | None:
    """``NAME`` itself, or fetched once from ``NAME_SECRET_ARN`` (Secrets Manager) or ``NAME_PARAMETER`` (SSM)."""
    arn, parameter = _raw(env, f"{name}_SECRET_ARN"), _raw(env, f"{name}_PARAMETER")
    if arn and parameter:
        raise ConfigError(f"set only one of {name}_SECRET_ARN and {name}_PARAMETER")
    if not (arn or parameter):
        return _raw(env, name)
    from shared import secrets

    try:
        if arn:
            return secrets.from_secrets_manager(arn, json_keys)
        assert parameter is not None
        return secrets.from_parameter_store(parameter, json_keys)
    except secrets.SecretError as exc:
        source = f"{name}_SECRET_ARN" if arn else f"{name}_PARAMETER"
        raise ConfigError(f"{source}: {exc}") from exc


def _url(env: Mapping[str, str], name: str, default: str, schemes: tuple[str, ...],
         json_keys: tuple[str, ...] = ("url",)) -> str:
    raw = _secret(env, name, json_keys)
    if raw is None:
        return default
    # The value may hold a password, so the message names the variable but never echoes it.
    try:
        scheme = urlsplit(raw).scheme
    except ValueError:
        raise ConfigError(f"{name} is not a valid URL") from None
    if scheme not in schemes:
        raise ConfigError(f"{name} must be a URL with scheme {' or '.join(schemes)}")
    return raw


def _redis_url(env: Mapping[str, str], default: str, cluster: bool) -> str:
    url = _url(env, "REDIS_URL", default, ("redis", "rediss", "unix"), ("url", "REDIS_URL"))
    if cluster:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            raise ConfigError("REDIS_URL cannot be a unix:// socket with REDIS_CLUSTER=true")
        if parts.path.strip("/") not in ("", "0"):
            raise ConfigError("REDIS_URL must use database 0 (or none) with REDIS_CLUSTER=true: a cluster has only one")
    return url


_NODE = re.compile(r"(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})")


def _cluster_nodes(env: Mapping[str, str], cluster: bool) -> tuple[tuple[str, int], ...]:
    raw = _raw(env, "REDIS_CLUSTER_NODES")
    if raw is None:
        return ()
    if not cluster:
        raise ConfigError("REDIS_CLUSTER_NODES is set but REDIS_CLUSTER is not true")
    nodes = []
    for item in raw.split(","):
        match = _NODE.fullmatch(item.strip())
        if match is None or not 1 <= int(match["port"]) <= 65_535:
            raise ConfigError(f"REDIS_CLUSTER_NODES must be host:port[,host:port...], got {item.strip()[:80]!r}")
        nodes.append((match["host"].strip("[]"), int(match["port"])))
    return tuple(nodes)


def _key_prefix(env: Mapping[str, str], default: str) -> str:
    raw = _raw(env, "LEDGER_KEY_PREFIX")
    if raw is None:
        return default
    if not _PREFIX_PATTERN.fullmatch(raw):
        raise ConfigError(f"LEDGER_KEY_PREFIX must match {_PREFIX_PATTERN.pattern}, got {raw!r}")
    return raw
