from __future__ import annotations

import pytest

from shared.config import ConfigError, Settings, load_settings


def test_defaults() -> None:
    assert load_settings({}) == Settings()


def test_values_are_parsed() -> None:
    settings = load_settings({
        "REDIS_URL": "redis://:secret@redis:6380/2", "REDIS_CLUSTER": "true", "LEDGER_PARTITIONS": "64",
        "LEDGER_KEY_PREFIX": "prod.ledger", "IDEMPOTENCY_TTL_SECONDS": "3600", "LOG_LEVEL": "debug",
        "REDIS_TIMEOUT_SECONDS": "0.5",
    })
    assert settings.redis_url == "redis://:secret@redis:6380/2"
    assert settings.redis_cluster
    assert settings.partitions == 64
    assert settings.key_prefix == "prod.ledger"
    assert settings.idempotency_ttl_seconds == 3600
    assert settings.log_level == "DEBUG"
    assert settings.redis_timeout_seconds == 0.5


@pytest.mark.parametrize(("name", "value"), [
    ("LEDGER_PARTITIONS", "0"), ("LEDGER_PARTITIONS", "many"), ("REDIS_CLUSTER", "maybe"),
    ("LEDGER_KEY_PREFIX", "a{b}"), ("LEDGER_KEY_PREFIX", "a:b"), ("REDIS_URL", "http://x"),
    ("COMMAND_MAX_ATTEMPTS", "0"), ("MAX_BODY_BYTES", "1"), ("LOG_LEVEL", "LOUD"),
    ("REDIS_TIMEOUT_SECONDS", "nan"),
])
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_url_errors_do_not_echo_secrets() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"REDIS_URL": "http://user:hunter2@host"})
    assert "hunter2" not in str(caught.value)
