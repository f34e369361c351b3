"""Settings from the environment. This is the only module that reads ``os.environ``.

Every value is validated when it is read, and a bad one raises ``ConfigError`` naming the variable,
so a misconfigured process fails at start-up with a message instead of misbehaving later.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What the write side (handlers, gateway) needs."""

    redis_url: str = "redis://localhost:6379/0"
    redis_cluster: bool = False
    redis_timeout_seconds: float = 2.0
    key_prefix: str = "ledger"
    partitions: int = 16
    idempotency_ttl_seconds: int = 86_400
    command_max_attempts: int = 10
    max_body_bytes: int = 16_384
    log_level: str = "INFO"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    defaults = Settings()
    return Settings(
        redis_url=_url(env, "REDIS_URL", defaults.redis_url, ("redis", "rediss", "unix")),
        redis_cluster=_flag(env, "REDIS_CLUSTER", defaults.redis_cluster),
        redis_timeout_seconds=_number(env, "REDIS_TIMEOUT_SECONDS", defaults.redis_timeout_seconds, float,
                                      0.05, 60.0),
        key_prefix=_key_prefix(env, defaults.key_prefix),
        partitions=_number(env, "LEDGER_PARTITIONS", defaults.partitions, int, 1, 16_384),
        idempotency_ttl_seconds=_number(env, "IDEMPOTENCY_TTL_SECONDS", defaults.idempotency_ttl_seconds,
                                        int, 60, 30 * 86_400),
        command_max_attempts=_number(env, "COMMAND_MAX_ATTEMPTS", defaults.command_max_attempts, int, 1, 100),
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
        raise ConfigError(f"{name} must be a {kind.__name__} between {low} and {high}, got {raw!r}") from None
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


def _url(env: Mapping[str, str], name: str, default: str, schemes: tuple[str, ...]) -> str:
    raw = _raw(env, name)
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


def _key_prefix(env: Mapping[str, str], default: str) -> str:
    raw = _raw(env, "LEDGER_KEY_PREFIX")
    if raw is None:
        return default
    if not _PREFIX_PATTERN.fullmatch(raw):
        raise ConfigError(f"LEDGER_KEY_PREFIX must match {_PREFIX_PATTERN.pattern}, got {raw!r}")
    return raw
