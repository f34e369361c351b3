"""`python -m devstack token`: tokens of the local issuer that `make run` starts (its key in the state dir)."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest
from jwt import PyJWK

from devstack.__main__ import main
from devstack.issuer import LOCAL_AUDIENCE, LocalIssuer


def test_a_token_for_the_local_issuer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DEV_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("DEV_ISSUER_PORT", "18083")
    assert main(["token", "alice", "--scope", "accounts:read", "--account", "acct-1", "--ttl", "30m"]) == 0
    token = capsys.readouterr().out.strip()
    key = (tmp_path / "issuer" / "signing-key.pem")
    assert key.stat().st_mode & 0o077 == 0, "the signing key must be readable by its owner only"
    issuer = LocalIssuer.from_directory(tmp_path, "http://127.0.0.1:18083")
    claims = jwt.decode(token, PyJWK(issuer.signing_key.public_jwk), algorithms=["ES256"], audience=LOCAL_AUDIENCE,
                        issuer="http://127.0.0.1:18083")
    assert (claims["sub"], claims["scope"], claims["acct"], claims["exp"] - claims["iat"]) == (
        "alice", "accounts:read", "acct-1", 1800)
    assert main(["token", "bob"]) == 0  # the same key again, default scopes
    again = jwt.decode(capsys.readouterr().out.strip(), PyJWK(issuer.signing_key.public_jwk), algorithms=["ES256"],
                       audience=LOCAL_AUDIENCE)
    assert again["scope"] == "accounts:read accounts:write" and "acct" not in again


@pytest.mark.parametrize("ttl", ["0", "1y", "-5m", "soon"])
def test_a_bad_lifetime_is_one_line(ttl: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DEV_STATE_DIR", str(tmp_path))
    assert main(["token", "alice", f"--ttl={ttl}"]) == 2
    assert "--ttl" in capsys.readouterr().err
