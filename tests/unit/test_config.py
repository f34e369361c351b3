from __future__ import annotations

import pytest

from projector.settings import load_projector_settings
from shared.config import RENAMED, AuthSettings, ConfigError, Settings, load_auth_settings, load_settings


def test_defaults() -> None:
    assert load_settings({}) == Settings()


def test_values_are_parsed() -> None:
    settings = load_settings({
        "REDIS_URL": "redis://:secret@redis:6380/2", "LEDGER_PARTITIONS": "64",
        "LEDGER_KEY_PREFIX": "prod.ledger", "IDEMPOTENCY_TTL_SECONDS": "3600", "LOG_LEVEL": "debug",
        "REDIS_TIMEOUT_SECONDS": "0.5",
    })
    assert settings.redis_url == "redis://:secret@redis:6380/2"
    assert not settings.redis_cluster
    assert settings.partitions == 64
    assert settings.key_prefix == "prod.ledger"
    assert settings.idempotency_ttl_seconds == 3600
    assert settings.log_level == "DEBUG"
    assert settings.redis_timeout_seconds == 0.5


@pytest.mark.parametrize(("name", "value"), [
    ("LEDGER_PARTITIONS", "0"), ("LEDGER_PARTITIONS", "many"), ("REDIS_CLUSTER", "maybe"),
    ("LEDGER_KEY_PREFIX", "a{b}"), ("LEDGER_KEY_PREFIX", "a:b"), ("REDIS_URL", "http://x"),
    ("COMMAND_MAX_ATTEMPTS", "0"), ("MAX_BODY_BYTES", "1"), ("LOG_LEVEL", "LOUD"),
    ("REDIS_TIMEOUT_SECONDS", "nan"), ("ARCHIVE_URL", "http://bucket/x"), ("ARCHIVE_URL", "s3:///no-bucket"),
    ("ARCHIVE_URL", "file://host/relative"), ("ARCHIVE_AFTER_EVENTS", "1"),
])
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_archive_settings() -> None:
    assert load_settings({}).archive_url is None
    chosen = load_settings({"ARCHIVE_URL": "s3://ledger-archive/prod", "ARCHIVE_AFTER_EVENTS": "200"})
    assert (chosen.archive_url, chosen.archive_after_events) == ("s3://ledger-archive/prod", 200)
    assert load_settings({"ARCHIVE_URL": "file:///var/lib/ledger"}).archive_url == "file:///var/lib/ledger"


def test_url_errors_do_not_echo_secrets() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"REDIS_URL": "http://user:hunter2@host"})
    assert "hunter2" not in str(caught.value)


def test_cluster_seed_nodes() -> None:
    settings = load_settings({"REDIS_URL": "rediss://:pw@node-1:7000", "REDIS_CLUSTER": "true",
                              "REDIS_CLUSTER_NODES": "node-2:7000, node-3.example.com:7001,[::1]:7002"})
    assert settings.redis_cluster
    assert settings.redis_cluster_nodes == (("node-2", 7000), ("node-3.example.com", 7001), ("::1", 7002))


@pytest.mark.parametrize(("environ", "message"), [
    ({"REDIS_CLUSTER_NODES": "node-2:7000"}, "REDIS_CLUSTER is not true"),
    ({"REDIS_CLUSTER": "true", "REDIS_CLUSTER_NODES": "node-2"}, "host:port"),
    ({"REDIS_CLUSTER": "true", "REDIS_CLUSTER_NODES": "node-2:99999"}, "host:port"),
    ({"REDIS_CLUSTER": "true", "REDIS_URL": "redis://node-1:7000/3"}, "database 0"),
    ({"REDIS_CLUSTER": "true", "REDIS_URL": "unix:///run/redis.sock"}, "unix"),
])
def test_cluster_settings_are_validated(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ)


def test_dev_only_variables_are_devstack_s_alone() -> None:
    """The service and the projector never read DEV_*: a stray one in a shell cannot point them elsewhere."""
    stray = {"DEV_REDIS_PORT": "6390", "DEV_MONGO_PORT": "27090"}
    assert load_settings(stray).redis_url == "redis://localhost:6379/0"
    assert load_projector_settings(stray).mongodb_uri == "mongodb://localhost:27017"


@pytest.mark.parametrize(("old", "new"), sorted(RENAMED.items()))
def test_a_renamed_variable_says_what_it_is_called_now(old: str, new: str) -> None:
    with pytest.raises(ConfigError, match=f"{old} was renamed {new}"):
        load_settings({old: "5"})


def test_a_retired_variable_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="PROJECTOR_POLL_MS is no longer read"):
        load_projector_settings({"PROJECTOR_POLL_MS": "50"})


def test_durations_are_seconds() -> None:
    settings = load_projector_settings({"PROJECTOR_LEASE_TTL_SECONDS": "2.5", "MONGODB_TIMEOUT_SECONDS": "0.3",
                                        "PROJECTOR_CHECK_INTERVAL_SECONDS": "1"})
    assert (settings.lease_ttl_seconds, settings.mongodb_timeout_seconds, settings.check_interval_seconds) == (
        2.5, 0.3, 1.0)
    assert load_settings({"REDIS_WAIT_TIMEOUT_SECONDS": "0.25"}).redis_wait_timeout_seconds == 0.25


GOOD_AUTH = {"AUTH_ISSUER": "https://issuer.example.com/realms/bank", "AUTH_AUDIENCE": "ledger-api"}


def test_no_authentication_settings_refuses_to_start() -> None:
    """Secure by default: nothing configured is not an open API; the message names what to set."""
    with pytest.raises(ConfigError) as caught:
        load_auth_settings({})
    message = str(caught.value)
    assert "AUTH_ISSUER" in message and "AUTH_AUDIENCE" in message and "AUTH_MODE=none" in message
    assert "\n" not in message


def test_authentication_settings() -> None:
    settings = load_auth_settings({**GOOD_AUTH, "AUTH_ALGORITHMS": "ES256, RS256", "AUTH_LEEWAY_SECONDS": "45"})
    assert settings == AuthSettings(mode="jwt", issuer=GOOD_AUTH["AUTH_ISSUER"], audience="ledger-api",
                                    algorithms=("ES256", "RS256"), leeway_seconds=45)
    assert load_auth_settings({"AUTH_MODE": "none"}).mode == "none"
    assert load_auth_settings({"AUTH_ISSUER": "http://127.0.0.1:8083", "AUTH_AUDIENCE": "x"}).jwks_url == ""


@pytest.mark.parametrize(("changes", "named"), [
    ({"AUTH_AUDIENCE": ""}, "AUTH_AUDIENCE"),
    ({"AUTH_ISSUER": "http://issuer.example.com"}, "AUTH_ISSUER"),  # plain http beyond loopback
    ({"AUTH_ISSUER": "issuer.example.com"}, "AUTH_ISSUER"),
    ({"AUTH_JWKS_URL": "file:///etc/passwd"}, "AUTH_JWKS_URL"),
    ({"AUTH_ALGORITHMS": "HS256"}, "AUTH_ALGORITHMS"),
    ({"AUTH_ALGORITHMS": "RS256,none"}, "AUTH_ALGORITHMS"),
    ({"AUTH_MODE": "none"}, "AUTH_ISSUER"),  # none and an issuer: which one was meant?
    ({"AUTH_MODE": "oauth"}, "AUTH_MODE"),
    ({"AUTH_LEEWAY_SECONDS": "3600"}, "AUTH_LEEWAY_SECONDS"),
])
def test_bad_authentication_settings_name_the_variable(changes: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_auth_settings({**GOOD_AUTH, **changes})
