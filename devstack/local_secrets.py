"""The consistency-token key of the local stack: made once under the state directory (readable by its owner
only) and kept, so tokens from one ``make run`` stay valid in the next and in ``devstack.invoke``. A
deployment takes its key from CONSISTENCY_TOKEN_SECRET or a secret store instead."""

from __future__ import annotations

import os
import secrets
from collections.abc import MutableMapping
from pathlib import Path

NAMES = ("CONSISTENCY_TOKEN_SECRET", "CONSISTENCY_TOKEN_SECRET_SECRET_ARN", "CONSISTENCY_TOKEN_SECRET_PARAMETER")


def consistency_secret(state_dir: Path) -> str:
    path = state_dir / "consistency-token-secret"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def provide(env: MutableMapping[str, str], state_dir: Path) -> bool:
    """Put the local key in ``env`` unless it names one already; whether it did."""
    if any(env.get(name) for name in NAMES):
        return False
    env["CONSISTENCY_TOKEN_SECRET"] = consistency_secret(state_dir)
    return True
