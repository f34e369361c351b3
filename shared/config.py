"""Settings from the environment. ``Environment`` is the only code that reads ``os.environ``.

Every value is validated when it is read, and a bad one raises ``ConfigError`` naming the variable, so a
misconfigured process fails at start-up with a message instead of misbehaving later. This module holds what
the functions read (and ships in their Lambda layer); the projector, the container gateway and ``make run``
keep their own settings next to them (``projector/settings.py``, ``gateway/settings.py``,
``devstack/settings.py``), read through the same ``Environment``. Durations are in seconds everywhere
(``*_SECONDS``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from shared import metrics

#: The most entries a partition log keeps (PARTITION_LOG_MAX_ENTRIES): about 20 MB of one partition's log.
DEFAULT_LOG_MAX_ENTRIES = 100_000
#: ARCHIVE_AFTER_EVENTS: about 10 KB of one account's events in Redis before they move to the archive.
DEFAULT_ARCHIVE_AFTER_EVENTS = 50

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_HOST = re.compile(r"[A-Za-z0-9.:-]{1,253}")
_ADDRESS = re.compile(r"(?P<host>[A-Za-z0-9.:-]{1,253}|\[[0-9A-Fa-f:]+\]):(?P<port>[0-9]{1,5})")
_NODE = re.compile(r"(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})")
_SCOPE_PREFIX = re.compile(r"[\x21-\x7e]{1,200}")
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
#: CloudWatch's rule for namespaces: 1-255 of these characters, not starting with "AWS/".
_NAMESPACE = re.compile(r"(?!AWS/)[A-Za-z0-9.\-_/#:]{1,255}")
#: Variables that were renamed (durations now all in seconds): naming the old one is an error that says so.
RENAMED = {
    "REDIS_WAIT_TIMEOUT_MS": "REDIS_WAIT_TIMEOUT_SECONDS", "MONGODB_TIMEOUT_MS": "MONGODB_TIMEOUT_SECONDS",
    "PROJECTOR_LEASE_TTL_MS": "PROJECTOR_LEASE_TTL_SECONDS",
    "PROJECTOR_CHECK_INTERVAL_S": "PROJECTOR_CHECK_INTERVAL_SECONDS", "GUNICORN_TIMEOUT": "GUNICORN_TIMEOUT_SECONDS",
    "GUNICORN_GRACEFUL_TIMEOUT": "GUNICORN_GRACEFUL_TIMEOUT_SECONDS",
    "GUNICORN_KEEPALIVE": "GUNICORN_KEEPALIVE_SECONDS",
}
#: Variables that mean nothing any more, and why.
RETIRED = {"PROJECTOR_POLL_MS": "the projector no longer polls: it blocks on its partition logs"}


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


class Environment:
    """The process environment (or a mapping standing in for it, in tests), read and validated."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if environ is None else environ
        for old, new in RENAMED.items():
            if self.raw(old) is not None:
                raise ConfigError(f"{old} was renamed {new} (in seconds): set that instead")
        for old, why in RETIRED.items():
            if self.raw(old) is not None:
                raise ConfigError(f"{old} is no longer read ({why}): remove it")

    def raw(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def number(self, name: str, default: T, kind: Callable[[str], T], low: float, high: float) -> T:
        raw = self.raw(name)
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

    def flag(self, name: str, default: bool) -> bool:
        raw = self._env.get(name)
        if raw is None:
            return default
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        raw = self.raw(name)
        if raw is None:
            return default
        if raw.upper() not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
        return raw.upper()

    def matching(self, name: str, default: str, pattern: re.Pattern[str], expected: str) -> str:
        """The variable's text when ``pattern`` matches all of it, ``default`` when it is unset."""
        raw = self.raw(name)
        if raw is None:
            return default
        if not pattern.fullmatch(raw):
            raise ConfigError(f"{name} must be {expected}, got {raw[:80]!r}")
        return raw

    def name(self, name: str, default: str) -> str:
        return self.matching(name, default, NAME_PATTERN, f"match {NAME_PATTERN.pattern}")

    def host(self, name: str, default: str) -> str:
        return self.matching(name, default, _HOST, "an address to bind, like 127.0.0.1 or 0.0.0.0")

    def address(self, name: str, default: str) -> str:
        expected = "host:port, like 0.0.0.0:8080"
        raw = self.matching(name, default, _ADDRESS, expected)
        match = _ADDRESS.fullmatch(raw)
        if match is not None and not 1 <= int(match["port"]) <= 65_535:
            raise ConfigError(f"{name} must be {expected}, got {raw[:80]!r}")
        return raw

    def secret(self, name: str, json_keys: tuple[str, ...]) -> str | None:
        """``NAME`` itself, or fetched once from ``NAME_SECRET_ARN`` (Secrets Manager) or ``NAME_PARAMETER``
        (SSM)."""
        arn, parameter = self.raw(f"{name}_SECRET_ARN"), self.raw(f"{name}_PARAMETER")
        if arn and parameter:
            raise ConfigError(f"set only one of {name}_SECRET_ARN and {name}_PARAMETER")
        if not (arn or parameter):
            return self.raw(name)
        from shared import secrets

        try:
            if arn:
                return secrets.from_secrets_manager(arn, json_keys)
            assert parameter is not None
            return secrets.from_parameter_store(parameter, json_keys)
        except secrets.SecretError as exc:
            source = f"{name}_SECRET_ARN" if arn else f"{name}_PARAMETER"
            raise ConfigError(f"{source}: {exc}") from exc

    def url(self, name: str, default: str, schemes: tuple[str, ...], json_keys: tuple[str, ...] = ("url",)) -> str:
        raw = self.secret(name, json_keys)
        return default if raw is None else _checked_url(name, raw, schemes)


def _checked_url(name: str, raw: str, schemes: tuple[str, ...]) -> str:
    # The value may hold a password, so the message names the variable but never echoes it.
    try:
        scheme = urlsplit(raw).scheme
    except ValueError:
        raise ConfigError(f"{name} is not a valid URL") from None
    if scheme not in schemes:
        raise ConfigError(f"{name} must be a URL with scheme {' or '.join(schemes)}")
    return raw


@dataclass(frozen=True)
class Settings:
    """What the functions (and everything that reaches Redis) need."""

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
    #: The most entries a partition log keeps, whatever the projectors do (they trim behind their checkpoints).
    partition_log_max_entries: int = DEFAULT_LOG_MAX_ENTRIES
    #: Where cold account history goes (``s3://bucket/prefix`` or ``file:///path``); None: nothing is archived.
    archive_url: str | None = None
    #: An account becomes due for archiving each time its version passes a multiple of this: Redis then
    #: holds fewer than about twice this many of its events.
    archive_after_events: int = DEFAULT_ARCHIVE_AFTER_EVENTS
    #: Refuse a POST without an Idempotency-Key (428): the only way a client can retry an unknown outcome safely.
    require_idempotency_key: bool = False
    #: Replicas that must confirm a write (WAIT) before it is acknowledged; 0: the primary's word is enough.
    redis_wait_replicas: int = 0
    redis_wait_timeout_seconds: float = 1.0
    #: A command's whole time budget, resolving a lost reply included; past it, 503 outcome-unknown.
    command_deadline_seconds: float = 8.0
    command_max_attempts: int = 10
    snapshot_interval: int = 2
    max_body_bytes: int = 16_384
    log_level: str = "INFO"
    #: How request and append counts leave the process: PROMETHEUS (scraped from the probe address), EMF
    #: (CloudWatch embedded-metric log lines, on Lambda) or OFF.
    metrics_format: str = "PROMETHEUS"
    #: The CloudWatch namespace of EMF metrics (one per deployment, so two stacks never mix their figures).
    metrics_namespace: str = metrics.NAMESPACE
    #: OpenTelemetry traces, on when OTEL_EXPORTER_OTLP_ENDPOINT is set (the exporter reads the OTEL_* itself).
    tracing: bool = False
    #: The traces' service name (OTEL_SERVICE_NAME); unset: each deployable's own.
    service_name: str | None = None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env = Environment(environ)
    defaults = Settings()
    cluster = env.flag("REDIS_CLUSTER", defaults.redis_cluster)
    return Settings(
        redis_url=_redis_url(env, defaults.redis_url, cluster),
        redis_password=env.secret("REDIS_PASSWORD", ("password", "REDIS_PASSWORD")),
        redis_cluster=cluster,
        redis_cluster_nodes=_cluster_nodes(env, cluster),
        redis_timeout_seconds=env.number("REDIS_TIMEOUT_SECONDS", defaults.redis_timeout_seconds, float, 0.05, 60.0),
        redis_single_connection=env.flag("REDIS_SINGLE_CONNECTION", defaults.redis_single_connection),
        key_prefix=env.matching("LEDGER_KEY_PREFIX", defaults.key_prefix, _PREFIX_PATTERN,
                                f"match {_PREFIX_PATTERN.pattern}"),
        partitions=env.number("LEDGER_PARTITIONS", defaults.partitions, int, 1, 16_384),
        idempotency_ttl_seconds=env.number("IDEMPOTENCY_TTL_SECONDS", defaults.idempotency_ttl_seconds, int, 60,
                                           30 * 86_400),
        partition_log_max_entries=env.number("PARTITION_LOG_MAX_ENTRIES", defaults.partition_log_max_entries, int,
                                             1_000, 100_000_000),
        archive_url=_archive_url(env),
        archive_after_events=env.number("ARCHIVE_AFTER_EVENTS", defaults.archive_after_events, int, 2, 1_000_000),
        require_idempotency_key=env.flag("REQUIRE_IDEMPOTENCY_KEY", defaults.require_idempotency_key),
        redis_wait_replicas=env.number("REDIS_WAIT_REPLICAS", defaults.redis_wait_replicas, int, 0, 16),
        redis_wait_timeout_seconds=env.number("REDIS_WAIT_TIMEOUT_SECONDS", defaults.redis_wait_timeout_seconds,
                                              float, 0.01, 60.0),
        command_deadline_seconds=env.number("COMMAND_DEADLINE_SECONDS", defaults.command_deadline_seconds, float,
                                            0.5, 300.0),
        command_max_attempts=env.number("COMMAND_MAX_ATTEMPTS", defaults.command_max_attempts, int, 1, 100),
        snapshot_interval=env.number("SNAPSHOT_INTERVAL", defaults.snapshot_interval, int, 0, 100_000),
        max_body_bytes=env.number("MAX_BODY_BYTES", defaults.max_body_bytes, int, 256, 1_048_576),
        log_level=env.choice("LOG_LEVEL", defaults.log_level, ("DEBUG", "INFO", "WARNING", "ERROR")),
        metrics_format=env.choice("METRICS_FORMAT", defaults.metrics_format, ("PROMETHEUS", "EMF", "OFF")),
        metrics_namespace=env.matching("METRICS_NAMESPACE", defaults.metrics_namespace, _NAMESPACE,
                                       "a CloudWatch namespace (1 to 255 of A-Z a-z 0-9 . - _ / # :, not "
                                       "starting with AWS/)"),
        tracing=_tracing(env),
        service_name=env.raw("OTEL_SERVICE_NAME"),
    )


def _archive_url(env: Environment) -> str | None:
    raw = env.raw("ARCHIVE_URL")
    if not raw:
        return None
    url = _checked_url("ARCHIVE_URL", raw, ("s3", "file"))
    parts = urlsplit(url)
    if parts.scheme == "s3" and not parts.netloc:
        raise ConfigError("ARCHIVE_URL must name a bucket: s3://<bucket>/<prefix>")
    if parts.scheme == "file" and (parts.netloc or not parts.path.startswith("/")):
        raise ConfigError("ARCHIVE_URL must be an absolute path: file:///<path>")
    return url


def _tracing(env: Environment) -> bool:
    """Whether an OTLP/HTTP endpoint is set. Read as it is (not from a secret store): the exporter reads the
    same variable itself."""
    raw = env.raw("OTEL_EXPORTER_OTLP_ENDPOINT")
    return raw is not None and bool(_checked_url("OTEL_EXPORTER_OTLP_ENDPOINT", raw, ("http", "https")))


def _redis_url(env: Environment, default: str, cluster: bool) -> str:
    url = env.url("REDIS_URL", default, ("redis", "rediss", "unix"), ("url", "REDIS_URL"))
    if cluster:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            raise ConfigError("REDIS_URL cannot be a unix:// socket with REDIS_CLUSTER=true")
        if parts.path.strip("/") not in ("", "0"):
            raise ConfigError("REDIS_URL must use database 0 (or none) with REDIS_CLUSTER=true: a cluster has only one")
    return url


def _cluster_nodes(env: Environment, cluster: bool) -> tuple[tuple[str, int], ...]:
    raw = env.raw("REDIS_CLUSTER_NODES")
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


_CONSISTENCY_UNCONFIGURED = (
    "CONSISTENCY_TOKEN_SECRET is not set: the service signs the consistency tokens its writes answer with, and "
    "refuses to start without a key to sign them (at least 32 characters; CONSISTENCY_TOKEN_SECRET_SECRET_ARN "
    "or CONSISTENCY_TOKEN_SECRET_PARAMETER to take it from a secret store); `make run` generates one")


def load_consistency_secret(environ: Mapping[str, str] | None = None) -> str:
    """The key consistency tokens are signed with: required, like the authentication settings."""
    secret = Environment(environ).secret("CONSISTENCY_TOKEN_SECRET", ("secret", "CONSISTENCY_TOKEN_SECRET"))
    if secret is None:
        raise ConfigError(_CONSISTENCY_UNCONFIGURED)
    if len(secret) < 32:
        raise ConfigError("CONSISTENCY_TOKEN_SECRET must be at least 32 characters (a random one: "
                          "python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return secret


@dataclass(frozen=True)
class MongoSettings:
    """Where the read model is: written by the projector, read by the query functions."""

    uri: str = field(default="mongodb://localhost:27017", repr=False)  # may embed a password
    database: str = "accountDB"
    collection: str = "accountCollection"
    timeout_seconds: float = 5.0


def load_mongo_settings(env: Environment) -> MongoSettings:
    defaults = MongoSettings()
    return MongoSettings(
        uri=env.url("MONGODB_URI", defaults.uri, ("mongodb", "mongodb+srv"), ("uri", "url", "MONGODB_URI")),
        database=env.name("MONGODB_DATABASE", defaults.database),
        collection=env.name("MONGODB_COLLECTION", defaults.collection),
        timeout_seconds=env.number("MONGODB_TIMEOUT_SECONDS", defaults.timeout_seconds, float, 0.1, 120.0),
    )


@dataclass(frozen=True)
class QuerySettings:
    """What the query functions need beyond ``Settings``."""

    mongo: MongoSettings = field(default_factory=MongoSettings)
    #: The projector group whose checkpoints say what the read model holds.
    group: str = "projector"
    #: How long a query with a consistency token waits for the read model before answering 503: short, as
    #: a Lambda invocation is billed while it waits.
    wait_seconds: float = 2.0


def load_query_settings(environ: Mapping[str, str] | None = None) -> QuerySettings:
    env = Environment(environ)
    defaults = QuerySettings()
    return QuerySettings(
        mongo=load_mongo_settings(env),
        group=env.name("PROJECTOR_GROUP", defaults.group),
        wait_seconds=env.number("QUERY_WAIT_SECONDS", defaults.wait_seconds, float, 0.0, 25.0),
    )


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
    env = Environment(environ)
    defaults = AuthSettings()
    mode = (env.raw("AUTH_MODE") or "").lower()
    issuer = env.raw("AUTH_ISSUER")
    if mode == "none":
        if issuer is not None:
            raise ConfigError("AUTH_MODE=none turns authentication off, but AUTH_ISSUER is set: unset one of them")
        return AuthSettings(mode="none")
    if mode not in ("", "jwt"):
        raise ConfigError(f"AUTH_MODE must be jwt or none, got {mode[:40]!r}")
    if issuer is None:
        raise ConfigError(_UNCONFIGURED)
    audience = env.raw("AUTH_AUDIENCE")
    if audience is None:
        raise ConfigError("AUTH_AUDIENCE must be set with AUTH_ISSUER: the audience (or, for Cognito access tokens, "
                          "the app client id) that tokens for this API carry")
    if not re.fullmatch(r"[\x21-\x7e]{1,256}", audience):
        raise ConfigError("AUTH_AUDIENCE must be 1-256 visible ASCII characters")
    jwks_url = env.raw("AUTH_JWKS_URL")
    return AuthSettings(
        mode="jwt",
        issuer=issuer_url(issuer, "AUTH_ISSUER"),
        audience=audience,
        jwks_url=issuer_url(jwks_url, "AUTH_JWKS_URL") if jwks_url else "",
        algorithms=_algorithms(env, defaults.algorithms),
        leeway_seconds=env.number("AUTH_LEEWAY_SECONDS", defaults.leeway_seconds, int, 0, 300),
        jwks_cooldown_seconds=env.number("AUTH_JWKS_COOLDOWN_SECONDS", defaults.jwks_cooldown_seconds, float,
                                         0.0, 3_600.0),
        scope_prefix=env.matching("AUTH_SCOPE_PREFIX", "", _SCOPE_PREFIX, "1-200 visible ASCII characters"),
    )


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


def _algorithms(env: Environment, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.raw("AUTH_ALGORITHMS")
    if raw is None:
        return default
    chosen = tuple(item.strip() for item in raw.split(",") if item.strip())
    wrong = [item for item in chosen if item not in ASYMMETRIC_ALGORITHMS]
    if wrong or not chosen:
        raise ConfigError(f"AUTH_ALGORITHMS must be a comma-separated list of {', '.join(ASYMMETRIC_ALGORITHMS)} "
                          f"(asymmetric algorithms only), got {raw[:80]!r}")
    return chosen
